"""Training data: read, validate and tokenise conversations or plain text, before any training step runs.

Inputs (``load_data``):

* conversations — JSONL/JSON/parquet rows in ShareGPT form (``{"conversations": [{"from": "human", "value": …}]}``)
  or OpenAI form (``{"messages": [{"role": "user", "content": …}]}``); rendered with the model's chat template,
  loss on assistant tokens only (every assistant turn of a multi-turn conversation, including its end-of-turn
  token);
* plain text — ``.txt`` files (one document per file), JSONL/JSON/parquet rows with a ``text`` field, a directory
  of ``.txt`` files, a ``datasets`` dataset saved with ``save_to_disk``, or a hub dataset id where a hub is
  reachable; loss on every token.

Every row is checked and tokenised up front, so a bad row stops the run before training with one line naming the
file, the line and the field (or is skipped and counted with ``skip_bad_rows``) — never halfway through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import RopekitError

IGNORE = -100
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bing": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}
OPENAI_ROLES = {"user", "assistant", "system"}


class BadRow(Exception):
    """A malformed data row; ``str`` names the field and what is wrong."""


@dataclass
class Example:
    """One tokenised document or conversation. ``labels`` is -100 where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    turns: list[int] = field(default_factory=list)  # token offsets where a user turn starts (conversation split points)
    where: str | None = None  # e.g. "data.jsonl line 17", to name the row in later checks

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class DataReport:
    source: str
    kind: str
    rows: int = 0
    skipped: int = 0
    first_error: str | None = None
    examples: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.source}: {self.rows} rows → {self.examples} examples, {self.tokens:,} tokens ({self.loss_tokens:,} with loss)"
        if self.skipped:
            text += f"; skipped {self.skipped} malformed rows (first: {self.first_error})"
        return text


# -------------------------------------------------------------------------------------------------------------- reading


def read_rows(path: Path) -> Iterator[tuple[str, object]]:
    """Yield ``(where, row)`` for a JSONL, JSON (list), parquet file or a ``datasets`` directory; ``where`` is e.g.
    ``"data.jsonl line 17"``. Unparseable lines are yielded as ``BadRow`` instances."""
    name = path.name
    suffix = path.suffix.lower()
    if path.is_dir():
        from datasets import load_from_disk

        try:
            dataset = load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as err:
            raise RopekitError(f"{path} is not a dataset saved with save_to_disk ({err})", "pass a .jsonl/.json/.parquet/.txt file or such a directory") from None
        if hasattr(dataset, "keys") and not hasattr(dataset, "features"):  # a DatasetDict
            dataset = dataset["train"] if "train" in dataset else dataset[next(iter(dataset))]
        for i, row in enumerate(dataset):
            yield f"{name} row {i}", row
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{name} line {number}", json.loads(line)
                except json.JSONDecodeError as err:
                    yield f"{name} line {number}", BadRow(f"not valid JSON ({err.msg} at column {err.colno})")
    elif suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise RopekitError(f"{name} is not valid JSON ({err.msg} at line {err.lineno})", "fix the file or convert it to JSONL") from None
        if not isinstance(rows, list):
            raise RopekitError(f"{name} must hold a JSON list of rows", "wrap the rows in [...] or use JSONL")
        for i, row in enumerate(rows):
            yield f"{name} item {i}", row
    elif suffix == ".parquet":
        from datasets import Dataset

        for i, row in enumerate(Dataset.from_parquet(str(path))):
            yield f"{name} row {i}", row
    else:
        raise RopekitError(f"cannot read {name}: unknown file type {suffix or '(none)'}", "use .jsonl, .json, .parquet or .txt")


def detect_kind(row) -> str:
    if isinstance(row, dict):
        if "conversations" in row or "messages" in row:
            return "chat"
        if "text" in row:
            return "text"
    return "unknown"


# -------------------------------------------------------------------------------------------------------- conversations


def conversation_messages(row) -> list[dict]:
    """A row in ShareGPT or OpenAI form → ``[{"role", "content"}]``, checked; raises ``BadRow``."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be a JSON object, got {type(row).__name__}")
    if "conversations" in row:
        turns, role_key, content_key, roles, form = row["conversations"], "from", "value", SHAREGPT_ROLES, "conversations"
    elif "messages" in row:
        turns, role_key, content_key, roles, form = row["messages"], "role", "content", {r: r for r in OPENAI_ROLES}, "messages"
    else:
        raise BadRow("no 'conversations' (ShareGPT) or 'messages' (OpenAI) field")
    if not isinstance(turns, list) or not turns:
        raise BadRow(f"field '{form}' must be a non-empty list")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRow(f"field '{form}[{i}]' must be an object with '{role_key}' and '{content_key}'")
        role, content = turn.get(role_key), turn.get(content_key)
        if role not in roles:
            raise BadRow(f"field '{form}[{i}].{role_key}' is {role!r}; expected one of {', '.join(sorted(roles))}")
        if isinstance(content, list):  # OpenAI content parts
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise BadRow(f"field '{form}[{i}].{content_key}' has non-text parts")
            content = "".join(parts)
        if not isinstance(content, str):
            raise BadRow(f"field '{form}[{i}].{content_key}' must be a string, got {type(content).__name__}")
        messages.append({"role": roles[role], "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow(f"field '{form}' has no assistant turn, so nothing to learn")
    return messages


def _render(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def tokenize_conversation(tokenizer, messages: list[dict]) -> Example:
    """Render with the chat template; labels only on assistant turns (content and end-of-turn marker).

    An assistant turn is the text the template adds between rendering ``messages[:i]`` with a generation prompt and
    rendering ``messages[:i+1]``. Templates for which these renders are not prefixes of the full render (some drop
    earlier turns' reasoning) are refused.
    """
    try:
        full = _render(tokenizer, messages)
        spans, turns = [], []
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                before = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else _render(tokenizer, [], True)
                upto = _render(tokenizer, messages[: i + 1])
                if not (upto.startswith(before) and full.startswith(upto)):
                    raise RopekitError("the chat template does not render conversations prefix by prefix",
                                       "use a template whose renders of earlier turns are prefixes of later ones")
                spans.append((len(before), len(upto)))
            elif message["role"] == "user":
                turns.append(len(_render(tokenizer, messages[:i])) if i else 0)
    except RopekitError:
        raise
    except Exception as err:  # a template error on this row's content (jinja raises many types)
        raise BadRow(f"the chat template failed on this conversation ({type(err).__name__}: {str(err)[:120]})") from None
    return _tokenize_with_spans(tokenizer, full, spans, turns)


def _tokenize_with_spans(tokenizer, text: str, spans: list[tuple[int, int]], turn_chars: list[int]) -> Example:
    """Tokenise ``text`` as one string; a token gets a label when it starts inside an assistant span."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        labels = [tid if any(a <= start < b for a, b in spans) else IGNORE for tid, (start, _) in zip(ids, offsets)]
        turns = sorted({next((k for k, (start, _) in enumerate(offsets) if start >= c), len(ids)) for c in turn_chars})
        return Example(ids, labels, turns)
    # Slow tokenizers have no offsets: tokenise the pieces between span boundaries separately.
    cuts = sorted({0, len(text), *[p for span in spans for p in span], *turn_chars})
    ids, labels, turns = [], [], []
    for a, b in zip(cuts, cuts[1:]):
        if a in turn_chars:
            turns.append(len(ids))
        piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if any(s <= a < e for s, e in spans) else [IGNORE] * len(piece)
    return Example(ids, labels, turns)


# ---------------------------------------------------------------------------------------------------------------- text


def tokenize_text(tokenizer, text: str) -> Example:
    """A document → ids with an end-of-sequence token appended (so packed documents are separated)."""
    from ..corpus import _clean

    ids = tokenizer(_clean(text), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return Example(ids, list(ids))


# ------------------------------------------------------------------------------------------------------------- loading


def load_data(source: str | Path, tokenizer, kind: str = "auto", skip_bad_rows: bool = False,
              chat_template: str | None = None) -> tuple[list[Example], DataReport]:
    """Read and tokenise a data source (see the module docstring). ``kind``: auto, chat or text."""
    if kind not in ("auto", "chat", "text"):
        raise RopekitError(f"unknown data kind {kind!r}", "use auto, chat or text")
    if chat_template is not None:
        path = Path(chat_template).expanduser()
        if not path.is_file():
            raise RopekitError(f"chat template file {path} does not exist", "pass a readable .jinja file")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    source_str = str(source)
    path = Path(source_str).expanduser()
    if path.is_file() and path.suffix.lower() == ".txt":
        return _text_files([path], tokenizer, source_str)
    if path.is_dir() and not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise RopekitError(f"{path} holds no .txt files and is not a saved dataset", "pass a data file or a directory of .txt files")
        return _text_files(files, tokenizer, source_str)
    if not path.exists():
        if path.suffix or "/" not in source_str or source_str.startswith((".", "/", "~")):
            raise RopekitError(f"data source {source_str} does not exist", "check the path (or pass a hub dataset id when a hub is reachable)")
        return _hub_rows(source_str, tokenizer, kind, skip_bad_rows)
    return _rows(read_rows(path), tokenizer, kind, skip_bad_rows, source_str)


def load_rows(rows: list, tokenizer, source: str, kind: str = "auto", skip_bad_rows: bool = False) -> tuple[list[Example], DataReport]:
    """Tokenise rows already in memory (same forms and checks as files)."""
    return _rows(((f"{source} row {i}", row) for i, row in enumerate(rows)), tokenizer, kind, skip_bad_rows, source)


def _text_files(files: list[Path], tokenizer, source: str):
    report = DataReport(source, "text")
    examples = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise RopekitError(f"{file} is not UTF-8 text", "convert it to UTF-8") from None
        report.rows += 1
        if text.strip():
            examples.append(tokenize_text(tokenizer, text))
            examples[-1].where = file.name
    return _finish(examples, report)


def _hub_rows(name: str, tokenizer, kind: str, skip_bad_rows: bool):
    try:
        from datasets import load_dataset

        dataset = load_dataset(name, split="train")
    except Exception as err:  # offline or unknown id
        raise RopekitError(f"could not load dataset {name!r} from the hub ({str(err).splitlines()[0][:160]})",
                           "pass a local file or directory") from None
    return _rows(((f"{name} row {i}", row) for i, row in enumerate(dataset)), tokenizer, kind, skip_bad_rows, name)


def _rows(rows, tokenizer, kind: str, skip_bad_rows: bool, source: str):
    report = DataReport(source, kind)
    examples: list[Example] = []
    for where, row in rows:
        report.rows += 1
        try:
            if isinstance(row, BadRow):
                raise row
            row_kind = detect_kind(row) if kind == "auto" else kind
            if report.kind == "auto" and row_kind != "unknown":
                report.kind = row_kind
            elif row_kind != report.kind and row_kind != "unknown":
                raise BadRow(f"a {row_kind} row in a {report.kind} file")
            if report.kind == "chat" or row_kind == "chat":
                if not getattr(tokenizer, "chat_template", None):
                    raise RopekitError("the tokenizer has no chat template, which conversations need",
                                       "pass --chat-template FILE.jinja, or train on plain text")
                examples.append(tokenize_conversation(tokenizer, conversation_messages(row)))
                examples[-1].where = where
            elif row_kind == "text":
                text = row.get("text") if isinstance(row, dict) else None
                if not isinstance(text, str):
                    raise BadRow(f"field 'text' must be a string, got {type(text).__name__}")
                if text.strip():
                    examples.append(tokenize_text(tokenizer, text))
                    examples[-1].where = where
            else:
                raise BadRow("no 'conversations', 'messages' or 'text' field")
        except BadRow as err:
            if not skip_bad_rows:
                raise RopekitError(f"{where}: {err}", "fix the row, or pass --skip-bad-rows to skip malformed rows and count them") from None
            report.skipped += 1
            report.first_error = report.first_error or f"{where}: {err}"
    if report.kind == "auto":
        raise RopekitError(f"{source} has no usable rows", "rows need 'conversations', 'messages' or 'text'")
    return _finish(examples, report)


def _finish(examples: list[Example], report: DataReport):
    report.examples = len(examples)
    report.tokens = sum(len(e) for e in examples)
    report.loss_tokens = sum(sum(1 for x in e.labels if x != IGNORE) for e in examples)
    if not examples:
        raise RopekitError(f"{report.source} gave no examples", "check that it holds text or conversations")
    return examples, report


# --------------------------------------------------------------------------------------------------------- preparation


def split_conversations(examples: list[Example], min_tokens: int, max_tokens: int, report: DataReport | None = None) -> list[Example]:
    """The EABF preparation (Zhang et al. 2024 App. A): drop conversations under ``min_tokens``; split longer than
    ``max_tokens`` at user-turn boundaries into pieces of at most ``max_tokens`` (a single turn longer than that is
    cut at ``max_tokens``). Pieces keep their assistant-only labels."""
    out, dropped, split = [], 0, 0
    for example in examples:
        if len(example) < min_tokens:
            dropped += 1
            continue
        if len(example) <= max_tokens:
            out.append(example)
            continue
        split += 1
        bounds = sorted({0, *example.turns, len(example)})
        start = 0
        while start < len(example):
            candidates = [b for b in bounds if start < b <= start + max_tokens]
            end = candidates[-1] if candidates else start + max_tokens
            piece = Example(example.input_ids[start:end], example.labels[start:end])
            if any(x != IGNORE for x in piece.labels):
                out.append(piece)
            start = end
    if report is not None:
        report.notes.append(f"EABF preparation: dropped {dropped} conversations under {min_tokens} tokens, split {split} longer than {max_tokens}")
    return out


def chunk_documents(examples: list[Example], length: int, min_piece: int = 64) -> list[Example]:
    """Cut documents into pieces of ``length`` tokens (plain fine-tuning at ``length``); pieces shorter than
    ``min_piece`` are dropped, shorter ones are kept for packing."""
    out = []
    for example in examples:
        for start in range(0, len(example), length):
            piece = Example(example.input_ids[start:start + length], example.labels[start:start + length])
            if len(piece) >= min_piece:
                out.append(piece)
    return out


def pack(examples: list[Example], length: int) -> list[tuple[list[int], list[int], list[int]]]:
    """Greedy first-fit packing of short examples into rows of at most ``length`` tokens.

    Returns ``(input_ids, labels, position_ids)`` rows; positions restart at 0 for every document and each
    document's first label is ignored (it would be predicted from the previous document). transformers reads the
    restarts in ``position_ids`` and builds a block-diagonal causal mask (or varlen flash-attention), so no token
    sees another document (tested in tests/test_training_data.py).
    """
    rows: list[list[Example]] = []
    room: list[int] = []
    for example in sorted(examples, key=len, reverse=True):
        example = Example(example.input_ids[:length], example.labels[:length])
        for i, free in enumerate(room):
            if len(example) <= free:
                rows[i].append(example)
                room[i] -= len(example)
                break
        else:
            rows.append([example])
            room.append(length - len(example))
    packed = []
    for docs in rows:
        ids, labels, positions = [], [], []
        for doc in docs:
            ids += doc.input_ids
            labels += [IGNORE] + doc.labels[1:]
            positions += list(range(len(doc)))
        packed.append((ids, labels, positions))
    return packed
