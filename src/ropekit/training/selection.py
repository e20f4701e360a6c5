"""``ropekit data select``: LongRecipe's training-data selection (Hu et al. 2024, arXiv 2409.00509 §4.1).

Documents are split into sentences at the tokenizer's sentence-end tokens (:func:`ropekit.training.positions.sentence_end_ids`;
a sentence ends *with* its end token), sentences are kept by a rule, and the kept sentences of each document, in order,
fill rows of at least ``budget`` tokens (default 30% of the target length). Rows are written as JSONL ``{"text": …}``,
which ``ropekit train --data`` reads; each is checked to hold the budget (and a sentence end before its last trained
token) after re-tokenisation exactly as training tokenises it. Rules:

* ``digits`` — the rule the reference code runs (zhiyuanhubj/LongRecipe ``FSProcessor.process_index``): keep every
  sentence containing a digit 0-9, keep the others with probability ``p`` (the code's select_ratio 0.6 gives p = 0.5).
  Unlike the code (which truncates each document to 24K tokens first, so its samples come out 40–60% short), a row
  draws further sentences from the same document until it holds the budget.
* ``logit-change`` — the paper's analysis: score every token by the signed increase of the true next token's
  log-probability from the original model H to an extended one H' (same text, same window), keep the global top
  ``top`` (20%), report which coarse classes those tokens are (digits, punctuation, frequent function words, other —
  no part-of-speech tagger is available offline, so these stand in for the paper's NUM/PUNCT/PRON+AUX+CCONJ+ADP), and
  keep the sentences containing a top-ranked token. The paper keeps sentences containing the selected token *types*
  (e.g. any number); this keeps sentences containing the selected token *occurrences*, which needs no tagger and uses
  the ranking directly.
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from ..errors import RopekitError

RULES = ("digits", "logit-change")
DIGIT = re.compile(r"[0-9]")
CLASSES = ("digits", "punctuation", "function words", "other")
# Frequent English function words: pronouns, auxiliaries, conjunctions, prepositions, determiners, negation — the
# part-of-speech classes (PRON, AUX, CCONJ, ADP, DET) that the paper's Fig. 4 finds among the most changed tokens.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every all both either neither no not
i me my mine myself you your yours yourself he him his himself she her hers herself it its itself we us our ours
they them their theirs themselves who whom whose which what thou thee thy thine ye
is am are was were be been being do does did done have has had having will would shall should can could may might
must ought art hast hath dost doth wilt shalt
and or but nor so yet for if then than because while though although whether unless
of in on at by with from to into onto upon over under about above below between among through during before after
against without within along across behind beyond near off out up down as till until since
""".split())


def token_class(text: str) -> str:
    """The coarse class of a token's text: digits, punctuation (punctuation/symbol characters only), function words,
    or other (whitespace-only tokens are 'other')."""
    stripped = text.strip()
    if DIGIT.search(stripped):
        return "digits"
    if stripped and all(unicodedata.category(c)[0] in "PS" for c in stripped):
        return "punctuation"
    if stripped.lower() in FUNCTION_WORDS:
        return "function words"
    return "other"


@dataclass
class Sentences:
    """One document split into sentences: ``texts`` partition the document's text; ``starts`` ``[S+1]`` are token
    offsets (the last is the token count) into ``ids``."""

    ids: list[int]
    texts: list[str]
    starts: list[int]

    def tokens(self, k: int) -> int:
        return self.starts[k + 1] - self.starts[k]


def split_sentences(tokenizer, text: str, end_ids: frozenset[int]) -> Sentences:
    """Tokenise ``text`` (no special tokens) and cut it after every sentence-end token, with character offsets so the
    sentences are exact substrings (decoding token pieces would lose SentencePiece's leading spaces)."""
    if not getattr(tokenizer, "is_fast", False):
        raise RopekitError("data select needs a fast tokenizer (character offsets)", "load the model's tokenizer.json (a fast tokenizer)")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    starts = [0] + [i + 1 for i, token in enumerate(ids[:-1]) if token in end_ids] + [len(ids)]
    chars = [0] + [offsets[s][0] for s in starts[1:-1]] + [len(text)]
    return Sentences(ids, [text[a:b] for a, b in zip(chars, chars[1:])], starts)


@dataclass
class SelectionReport:
    source: str
    rule: str
    budget: int
    p: float | None = None
    documents: int = 0
    sentences: int = 0
    digit_sentences: int = 0
    kept_sentences: int = 0
    rows: int = 0
    row_tokens: int = 0
    dropped_tokens: int = 0  # kept sentences at the end of a document that did not fill a row
    passes: int = 0
    token_classes: dict | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        share = self.digit_sentences / max(self.sentences, 1)
        return (f"{self.source}: {self.documents} documents, {self.sentences:,} sentences ({share:.2%} with a digit), kept "
                f"{self.kept_sentences:,} → {self.rows} rows of ≥ {self.budget} tokens ({self.row_tokens:,} tokens)")


# ----------------------------------------------------------------------------------------------------------- documents


def documents(source: str, tokenizer, budget: int, count: int | None = None, seed: int = 0) -> Iterator[tuple[str, str]]:
    """``(where, text)`` per document. ``source``: ``shakespeare`` (the offline plays, one document each),
    ``synthetic`` (the synthetic retrieval conversations as plain text: they carry numbers), a ``.txt`` file, a
    directory of them, or JSONL/JSON/parquet/saved-dataset rows with ``text`` or conversations (contents joined)."""
    from .data import BadRow, conversation_messages, detect_kind, read_rows

    if source == "shakespeare":
        from ..eval.corpus import shakespeare_files

        for file in shakespeare_files():
            yield file.name, file.read_text(encoding="utf-8", errors="replace")
        return
    if source == "synthetic":
        from .synthetic import synthetic_conversations

        rows = synthetic_conversations(tokenizer, count or 64, max_tokens=4 * budget, min_tokens=3 * budget, seed=seed)
        for i, row in enumerate(rows):
            yield f"synthetic conversation {i}", "\n\n".join(m["content"] for m in row["messages"])
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise RopekitError(f"data source {source} does not exist", "pass a file or directory, or shakespeare / synthetic for the offline texts")
    if path.is_file() and path.suffix.lower() == ".txt":
        files = [path]
    elif path.is_dir() and not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise RopekitError(f"{path} holds no .txt files and is not a saved dataset", "pass a data file or a directory of .txt files")
    else:
        files = None
    if files is not None:
        for file in files:
            try:
                yield file.name, file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise RopekitError(f"{file} is not UTF-8 text", "convert it to UTF-8") from None
        return
    for where, row in read_rows(path):
        try:
            if isinstance(row, BadRow):
                raise row
            kind = detect_kind(row)
            if kind == "text":
                if not isinstance(row["text"], str):
                    raise BadRow(f"field 'text' must be a string, got {type(row['text']).__name__}")
                yield where, row["text"]
            elif kind == "chat":
                yield where, "\n\n".join(m["content"] for m in conversation_messages(row))
            else:
                raise BadRow("no 'text', 'conversations' or 'messages' field")
        except BadRow as err:
            raise RopekitError(f"{where}: {err}", "fix the row") from None


def document_count(source: str, tokenizer, budget: int, count: int | None = None, seed: int = 0) -> int:
    """How many documents :func:`documents` yields (without tokenising; synthetic ones are not generated)."""
    if source == "synthetic":
        return count or 64
    return sum(1 for _ in documents(source, tokenizer, budget, count, seed))


# -------------------------------------------------------------------------------------------------------------- rules


def digit_keep(sentences: Sentences, p: float, rng: random.Random) -> list[bool]:
    """The reference code's rule: a sentence with a digit is kept; any other with probability ``p``."""
    return [bool(DIGIT.search(text)) or rng.random() < p for text in sentences.texts]


@torch.no_grad()
def next_token_logprobs(model, ids: list[int], window: int, chunk: int = 1024) -> torch.Tensor:
    """``[len(ids)]`` float32: log p(ids[j] | the tokens before j in its window); NaN at each window's first token.

    Windows of ``window`` tokens are scored independently; the output layer runs in chunks from the final hidden
    states, so ``[tokens, vocab]`` logits never exist at once.
    """
    from ..extension import reset_rope_state

    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    out = torch.full((len(ids),), float("nan"))
    for start in range(0, len(ids), window):
        piece = torch.tensor(ids[start:start + window], device=device)
        if piece.numel() < 2:
            break
        reset_rope_state(model)
        hidden = model.get_decoder()(input_ids=piece[None], use_cache=False).last_hidden_state[0]
        for a in range(0, piece.numel() - 1, chunk):
            logits = head(hidden[a:a + chunk][: piece.numel() - 1 - a]).float()
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            targets = piece[a + 1:a + 1 + logits.shape[0]]
            out[start + a + 1:start + a + 1 + logits.shape[0]] = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0].cpu()
    return out


def logit_change(original, extended, ids: list[int], window: int) -> torch.Tensor:
    """``[len(ids)]``: the signed change of each token's log-probability (as the true next token), H' minus H."""
    return next_token_logprobs(extended, ids, window) - next_token_logprobs(original, ids, window)


def rank_token_types(ids: list[int], scores: torch.Tensor) -> list[tuple[int, float, int]]:
    """The paper's Eq. 3: per token id, the summed change over its occurrences; ``[(id, Δ, count)]``, largest Δ first."""
    finite = ~torch.isnan(scores)
    token_ids = torch.tensor(ids)[finite]
    values = scores[finite].double()
    total = torch.zeros(int(token_ids.max()) + 1 if token_ids.numel() else 1, dtype=torch.float64).index_add_(0, token_ids, values)
    count = torch.bincount(token_ids, minlength=total.numel())
    order = torch.argsort(total, descending=True)
    return [(int(i), float(total[i]), int(count[i])) for i in order if count[i] > 0]


def top_threshold(scores: torch.Tensor, top: float) -> float:
    """The score of the ``ceil(top · N)``-th largest finite score."""
    finite = scores[~torch.isnan(scores)]
    if finite.numel() == 0:
        raise RopekitError("no token could be scored", "give documents of at least two tokens")
    k = max(1, math.ceil(top * finite.numel()))
    return float(torch.topk(finite, k).values[-1])


def class_report(tokenizer, ids: list[int], scores: torch.Tensor, threshold: float, top: float, ranking) -> dict:
    """Counts and shares of each coarse class among all scored tokens and among the top-ranked ones."""
    finite = ~torch.isnan(scores)
    token_ids = torch.tensor(ids)[finite]
    chosen = scores[finite] >= threshold
    names = {}
    for token in torch.unique(token_ids).tolist():
        names[token] = token_class(tokenizer.decode([token]))
    all_counts = {c: 0 for c in CLASSES}
    top_counts = {c: 0 for c in CLASSES}
    for token, is_top in zip(token_ids.tolist(), chosen.tolist()):
        all_counts[names[token]] += 1
        if is_top:
            top_counts[names[token]] += 1
    n_all, n_top = max(sum(all_counts.values()), 1), max(sum(top_counts.values()), 1)
    return {
        "top_fraction": top, "threshold": threshold, "scored_tokens": int(finite.sum()), "top_tokens": int(chosen.sum()),
        "classes": {c: {"top": top_counts[c], "top_share": top_counts[c] / n_top, "all": all_counts[c],
                        "all_share": all_counts[c] / n_all} for c in CLASSES},
        "top_types": [{"token": tokenizer.decode([t]), "id": t, "delta_sum": round(d, 4), "count": n, "class": token_class(tokenizer.decode([t]))}
                      for t, d, n in ranking[:30]],
        "note": "coarse classes (no part-of-speech tagger offline): digits = the token holds a digit; punctuation = only "
                "punctuation/symbol characters; function words = a fixed list of English pronouns, auxiliaries, "
                "conjunctions, prepositions and determiners; other = everything else",
    }


def plot_classes(report: dict, path: Path) -> Path:
    from ..plotting import pyplot as _plt, save_figure as _save

    plt = _plt()
    classes = report["classes"]
    x = range(len(CLASSES))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar([i - 0.2 for i in x], [100 * classes[c]["all_share"] for c in CLASSES], width=0.4, label="all scored tokens")
    ax.bar([i + 0.2 for i in x], [100 * classes[c]["top_share"] for c in CLASSES], width=0.4,
           label=f"top {100 * report['top_fraction']:.0f}% by log-prob gain")
    ax.set_xticks(list(x), CLASSES)
    ax.set_ylabel("% of tokens")
    ax.set_title("Which tokens gain most from the extension (LongRecipe §4.1)")
    ax.legend(fontsize=8)
    return _save(fig, path)


# -------------------------------------------------------------------------------------------------------------- rows


def fill_rows(tokenizer, sentences: Sentences, keep: list[bool], budget: int, end_ids: frozenset[int],
              report: SelectionReport, limit: int | None = None) -> list[str]:
    """The kept sentences of one document, in order, cut into rows holding at least ``budget`` tokens as ``ropekit
    train`` tokenises them (with a sentence end before the last trained token); the rest is dropped and counted.
    ``limit``: stop after that many rows (the rest of the document is left unused)."""
    from .data import tokenize_text
    from .positions import sentence_end_offsets

    rows, current, count = [], [], 0
    for k, kept in enumerate(keep):
        if not kept:
            continue
        report.kept_sentences += 1
        current.append(sentences.texts[k])
        count += sentences.tokens(k)
        if count < budget:
            continue
        text = "".join(current)
        ids = tokenize_text(tokenizer, text).input_ids
        if len(ids) >= budget and bool((sentence_end_offsets(ids[:budget], end_ids) < budget - 1).any()):
            rows.append(text)
            report.row_tokens += len(ids)
            current, count = [], 0
            if limit is not None and len(rows) >= limit:
                return rows
    report.dropped_tokens += count
    return rows


def select(source: str, tokenizer, budget: int, rule: str = "digits", p: float = 0.5, rows: int | None = None,
           seed: int = 0, original=None, extended=None, top: float = 0.2, window: int | None = None,
           output: str | Path | None = None, progress: bool = True) -> tuple[list[str], SelectionReport]:
    """Select sentences from ``source`` (see :func:`documents`) and build rows of at least ``budget`` tokens.

    ``rule="digits"``: ``p`` is the probability of keeping a digit-free sentence; with ``rows``, each document gives at
    most ``ceil(rows / documents)`` rows per pass (so a few rows come from several documents, not the first one), and
    passes over the source repeat with fresh draws until that many rows exist. ``rule="logit-change"``:
    ``original``/``extended`` are loaded models (H, H'), ``top`` the kept fraction of tokens, ``window`` the scoring
    window (default: H's native length); one pass. ``output``: a ``.jsonl`` path (replaced); rows are written as they
    are made, and for logit-change the class report goes next to it (``<name>.token-classes.json``/``.png``).
    Returns the rows and a report.
    """
    from tqdm.auto import tqdm

    from .positions import sentence_end_ids

    if rule not in RULES:
        raise RopekitError(f"unknown selection rule {rule!r}", f"use one of: {', '.join(RULES)}")
    if not 0.0 <= p <= 1.0:
        raise RopekitError(f"p = {p} is outside [0, 1]", "pass --p between 0 and 1 (the reference code's rule keeps half: 0.5)")
    if not 0.0 < top <= 1.0:
        raise RopekitError(f"top = {top} is outside (0, 1]", "pass --top between 0 and 1 (the paper keeps 0.2)")
    if rule == "logit-change" and (original is None or extended is None):
        raise RopekitError("the logit-change rule needs the original and the extended model", "pass --extended CHECKPOINT")
    end_ids = sentence_end_ids(tokenizer)
    report = SelectionReport(source, rule, budget, p if rule == "digits" else None)
    handle = open(output, "w", encoding="utf-8") if output is not None else None
    selected: list[str] = []

    def emit(new_rows):
        selected.extend(new_rows)
        if handle is not None:
            handle.writelines(json.dumps({"text": r}, ensure_ascii=False) + "\n" for r in new_rows)
            handle.flush()

    try:
        if rule == "digits":
            rng = random.Random(f"longrecipe-select-{seed}")
            per_document = None
            if rows is not None:
                per_document = math.ceil(rows / max(1, document_count(source, tokenizer, budget, rows, seed)))
            while rows is None or len(selected) < rows:
                report.passes += 1
                before = len(selected)
                for where, text in tqdm(documents(source, tokenizer, budget, rows, seed), desc=f"select (pass {report.passes})",
                                        unit="doc", disable=not progress):
                    sentences = _split(tokenizer, text, end_ids, report, first_pass=report.passes == 1)
                    emit(fill_rows(tokenizer, sentences, digit_keep(sentences, p, rng), budget, end_ids, report, per_document))
                    if rows is not None and len(selected) >= rows:
                        break
                if len(selected) == before:
                    raise RopekitError(f"no document of {source} fills a row of {budget} tokens after selection",
                                       "give longer documents, raise --p, or lower the budget (--fraction / --train-length)")
                if rows is None or p == 1.0:  # p = 1 keeps everything: another pass would repeat the same rows
                    break
        else:
            window = window or _native_length(original)
            docs, all_ids, all_scores = [], [], []
            for where, text in tqdm(documents(source, tokenizer, budget, rows, seed), desc="score (H and H')", unit="doc", disable=not progress):
                sentences = _split(tokenizer, text, end_ids, report, first_pass=True)
                scores = logit_change(original, extended, sentences.ids, window)
                docs.append(sentences)
                all_ids.extend(sentences.ids)
                all_scores.append(scores)
            report.passes = 1
            scores = torch.cat(all_scores)
            threshold = top_threshold(scores, top)
            report.token_classes = class_report(tokenizer, all_ids, scores, threshold, top, rank_token_types(all_ids, scores))
            for sentences, doc_scores in zip(docs, all_scores):
                chosen = (doc_scores >= threshold).tolist()  # NaN compares False
                keep = [any(chosen[sentences.starts[k]:sentences.starts[k + 1]]) for k in range(len(sentences.texts))]
                emit(fill_rows(tokenizer, sentences, keep, budget, end_ids, report))
                if rows is not None and len(selected) >= rows:
                    break
            if output is not None:
                base = Path(output).with_suffix("")
                Path(f"{base}.token-classes.json").write_text(json.dumps(report.token_classes, indent=2, ensure_ascii=False))
                plot_classes(report.token_classes, Path(f"{base}.token-classes.png"))
    finally:
        if handle is not None:
            handle.close()
    if rows is not None:
        if len(selected) < rows:
            report.notes.append(f"asked for {rows} rows, the source gave {len(selected)}")
        selected = selected[:rows]
    report.rows = len(selected)
    if not selected:
        raise RopekitError(f"no row of {budget} tokens could be filled from {source}", "give longer documents or lower the budget")
    if output is not None and rows is not None:  # trim what a last document added beyond `rows`
        Path(output).write_text("".join(json.dumps({"text": r}, ensure_ascii=False) + "\n" for r in selected), encoding="utf-8")
    return selected, report


def _split(tokenizer, text: str, end_ids, report: SelectionReport, first_pass: bool) -> Sentences:
    from ..eval.corpus import _clean

    sentences = split_sentences(tokenizer, _clean(text), end_ids)
    if first_pass:
        report.documents += 1
        report.sentences += len(sentences.texts)
        report.digit_sentences += sum(bool(DIGIT.search(t)) for t in sentences.texts)
    return sentences


def _native_length(model) -> int:
    from ..extension import native_length_of

    return native_length_of(model.config)


def report_dict(report: SelectionReport) -> dict:
    return asdict(report)


def select_command(output, data: str = "shakespeare", target_length="32k", fraction: float = 0.3, train_length=None,
                   rule: str = "digits", p: float = 0.5, model: str = "smollm2-135m", extended: str | None = None, top: float = 0.2,
                   window=None, rows: int | None = None, seed: int = 0, overwrite: bool = False, device: str = "auto",
                   progress: bool = True) -> SelectionReport:
    """``ropekit data select``: check the arguments, load the tokenizer (and the models for logit-change), select,
    write the rows to ``output`` and the report to ``<output>.report.json``."""
    from ..lengths import parse_length
    from ..models import load_model, resolve_source

    target = parse_length(target_length, "target length")
    if train_length is not None:
        budget = parse_length(train_length, "training length")
    else:
        if not 0.0 < fraction <= 1.0:
            raise RopekitError(f"--fraction {fraction} is outside (0, 1]", "pass the share of the target per row, e.g. 0.3")
        budget = round(fraction * target)
    if budget > target:
        raise RopekitError(f"the row budget {budget} is longer than the target {target}", "pass --train-length below the target (default 30%)")
    if budget < 2:
        raise RopekitError(f"the row budget {budget} is too small", "pass a larger --fraction or --train-length")
    if rule not in RULES:
        raise RopekitError(f"unknown selection rule {rule!r}", f"use one of: {', '.join(RULES)}")
    if not 0.0 <= p <= 1.0:
        raise RopekitError(f"p = {p} is outside [0, 1]", "pass --p between 0 and 1 (the reference code's rule keeps half: 0.5)")
    if rule == "logit-change" and extended is None:
        raise RopekitError("the logit-change rule needs the extended model H'", "pass --extended CHECKPOINT (e.g. from ropekit extend or train)")
    out = Path(output).expanduser()
    if out.suffix != ".jsonl":
        raise RopekitError(f"--output {out} must end in .jsonl", "write e.g. --output rows.jsonl")
    if out.exists() and not overwrite:
        raise RopekitError(f"{out} already exists", "choose a new file or pass --overwrite")
    original = extended_model = None
    if rule == "logit-change":
        original, tokenizer = load_model(model, device=device, dtype="float32")
        extended_model, _ = load_model(extended, device=device, dtype="float32")
    else:
        kind, source = resolve_source(model)
        if kind == "dir" and (Path(source) / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source)
        else:
            _, tokenizer = load_model(model, device="cpu", dtype="float32")
    if tokenizer is None:
        raise RopekitError(f"{model} has no tokenizer", "pass --model with a tokenizer (e.g. smollm2-135m)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _, report = select(data, tokenizer, budget, rule=rule, p=p, rows=rows, seed=seed, original=original, extended=extended_model,
                       top=top, window=parse_length(window, "window") if window is not None else None, output=out, progress=progress)
    Path(f"{out.with_suffix('')}.report.json").write_text(json.dumps(report_dict(report), indent=2, ensure_ascii=False))
    return report
