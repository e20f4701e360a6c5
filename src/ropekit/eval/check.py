"""The before/after check: did fine-tuning keep the model it started from?

Both models are scored on the same seeded items: the perplexity of held-out natural text (*Paradise Lost* by
default, which no default training recipe uses) and the pass key, inside the native window (at ``length`` tokens,
1K by default: a few short forwards per model), and optionally at longer ``lengths`` (where the trained model is
expected to gain). Inside the window two changes count as a regression:

* perplexity up by more than ``ppl_tolerance`` (10%);
* pass keys down by more than their binomial noise at these items: more than ``max(1, 2·sqrt(n·p(1−p)))`` of the
  ``n`` trials, with ``p`` the two models' pooled success rate.

:func:`check_models` returns the table (``rows``), the regressions in words and a verdict; ``ropekit train`` runs it
at the end of every run (``training_summary.json`` and the checkpoint's ``config.ropekit["check"]`` keep it) and
``ropekit check BASE TRAINED`` on any two models. Measured cost on SmolLM2-135M with the defaults: see
docs/training.md ("The before/after check").
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from ..errors import RopekitError
from ..lengths import format_length, parse_length

PPL_TOLERANCE = 0.10
DEFAULT_LENGTH = 1024
DEFAULT_WINDOWS = 4
DEFAULT_TRIALS = 10


def passkey_noise(n: int, before: int, after: int) -> float:
    """How many pass keys two equally good models could differ by at ``n`` items: 2 binomial standard deviations of
    the pooled rate, at least one item."""
    p = (before + after) / (2 * n)
    return max(1.0, 2.0 * math.sqrt(n * p * (1 - p)))


def score(model, tokenizer, lengths: list[int], text: str, windows: int, trials: int, seed: int) -> dict[int, dict]:
    """Perplexity (``windows`` windows of ``text``, last quarter of each scored) and pass key (``trials``) per length."""
    from .passkey import run_passkey
    from .perplexity import run_perplexity

    out = {}
    for n in lengths:
        ppl = run_perplexity(model, tokenizer, [n], windows=windows, tail=max(16, n // 4), source=text, progress=False)
        try:
            keys = run_passkey(model, tokenizer, [n], trials=trials, seed=seed, progress=False)["lengths"][str(n)]
            found = sum(t["correct"] for t in keys["trials"])
        except ValueError:  # the pass-key prompt does not fit this length (a tiny test model's window): perplexity only
            found = None
        out[n] = {"ppl": ppl["lengths"][str(n)]["ppl"], "passkey": found, "trials": trials}
    return out


def compare_scores(before: dict[int, dict], after: dict[int, dict], native: int, ppl_tolerance: float = PPL_TOLERANCE) -> tuple[list, list]:
    """The table rows and the in-window regressions (in words) of two :func:`score` results."""
    rows, regressions = [], []
    for n in sorted(before):
        b, a = before[n], after[n]
        inside = n <= native
        ppl_change = a["ppl"] / b["ppl"] - 1
        keys = b["passkey"] is not None and a["passkey"] is not None
        noise = passkey_noise(b["trials"], b["passkey"], a["passkey"]) if keys else None
        rows.append({"length": n, "inside_window": inside, "ppl_before": round(b["ppl"], 3), "ppl_after": round(a["ppl"], 3),
                     "ppl_change": round(ppl_change, 4), "passkey_before": b["passkey"], "passkey_after": a["passkey"],
                     "trials": b["trials"], "passkey_noise": round(noise, 2) if keys else None})
        if not inside:
            continue
        if ppl_change > ppl_tolerance:
            regressions.append(f"perplexity at {format_length(n)} {b['ppl']:.1f} → {a['ppl']:.1f} ({100 * ppl_change:+.0f}%, "
                               f"more than {100 * ppl_tolerance:.0f}%)")
        if keys and b["passkey"] - a["passkey"] > noise:
            regressions.append(f"pass keys at {format_length(n)} {b['passkey']}/{b['trials']} → {a['passkey']}/{a['trials']} "
                               f"(more than the noise of {noise:.1f})")
    return rows, regressions


def check_models(base, trained, lengths: list | tuple = (), text: str = "paradise_lost", length: int | str = DEFAULT_LENGTH,
                 windows: int = DEFAULT_WINDOWS, trials: int = DEFAULT_TRIALS, seed: int = 0, device: str = "auto",
                 ppl_tolerance: float = PPL_TOLERANCE) -> dict:
    """Score ``base`` and ``trained`` (anything :func:`ropekit.load_model` loads) on the same items; see the module
    docstring. ``length`` is the in-window length (capped at the native window), ``lengths`` further ones."""
    from ..extension import native_length_of
    from ..models import ALIASES, load_model, resolve_source

    started = time.time()
    for source in (base, trained):  # a missing path fails here, before either model loads
        if str(source).lower() not in ALIASES:
            resolve_source(str(source))
    check_length = parse_length(length, "check length")
    extra = [parse_length(n, "check length") for n in lengths]
    if windows < 1 or trials < 1:
        raise RopekitError(f"the check needs at least one window and one trial (got {windows}, {trials})", "pass e.g. windows=4, trials=10")
    results = {}
    native = None
    for role, source in (("before", base), ("after", trained)):
        model, tokenizer = load_model(str(source), device=device)
        if tokenizer is None:
            raise RopekitError(f"{source} has no tokenizer", "check a checkpoint saved with its tokenizer")
        if native is None:
            native = native_length_of(model.config)
        grid = sorted({min(check_length, native), *extra})
        results[role] = score(model, tokenizer, grid, text, windows, trials, seed)
        del model
    rows, regressions = compare_scores(results["before"], results["after"], native, ppl_tolerance)
    return {"base": str(base), "trained": str(trained), "text": text, "native_length": native, "windows": windows,
            "trials": trials, "seed": seed, "ppl_tolerance": ppl_tolerance, "rows": rows, "regressions": regressions,
            "verdict": "regressed" if regressions else "kept", "seconds": round(time.time() - started, 1)}


def table_lines(check: dict) -> list[str]:
    """The check as a small plain-text table."""
    lines = [f"before/after check on {check['text']} ({check['windows']} windows) and {check['trials']} pass keys:",
             "length  window   ppl before → after   pass keys before → after"]
    for row in check["rows"]:
        lines.append(f"{format_length(row['length']):>6}  {'inside' if row['inside_window'] else 'beyond':<7}  "
                     f"{row['ppl_before']:>9.1f} → {row['ppl_after']:<9.1f} {100 * row['ppl_change']:+6.1f}%   "
                     + (f"{row['passkey_before']:>3}/{row['trials']} → {row['passkey_after']}/{row['trials']}"
                        if row["passkey_before"] is not None else "  (prompt does not fit)"))
    return lines


def warning_line(check: dict, recipe=None, learning_rate: float | None = None) -> str | None:
    """One loud line naming the regression, its likely causes and the fix; None when the model was kept."""
    if not check["regressions"]:
        return None
    causes = []
    if recipe is not None and getattr(recipe, "data", None) == "chat":
        causes.append("loss on short answers only (no plain text)")
        if learning_rate is not None and learning_rate >= 1e-4:
            causes.append(f"a high learning rate for that loss ({learning_rate:g})")
    # measured on SmolLM2 (docs/training.md): the extension alone costs in-window perplexity and training wins it back
    causes += ["too few plain-text tokens", "too few steps to recover from the extension itself"]
    return (f"the trained model regressed inside its native window: {'; '.join(check['regressions'])}. Likely: "
            f"{', '.join(causes)}. Fix: --recipe eabf-keep (plain text beside the retrieval data and in-window "
            f"distillation towards the starting model), or --distill 1 and --text-share 0.75 with your own recipe")


def overlap(check_text: str, training_text: str, snippets: int = 20, size: int = 80, seed: int = 0) -> float:
    """The share of ``snippets`` random ``size``-character pieces of the check text found verbatim in the training
    text: above 0 means the check scores text the model was trained on."""
    from ..corpus import natural_text

    check = natural_text(check_text)
    if len(check) <= size:
        return 1.0 if check in training_text else 0.0
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(check) - size) for _ in range(snippets)]
    return sum(check[s:s + size] in training_text for s in starts) / snippets


def training_text(data: str | None, default_source: str = "shakespeare") -> str:
    """The text a training run saw, for :func:`overlap`: the user's file (JSONL rows as they are), or the recipe's
    offline corpus."""
    from ..corpus import natural_text

    if data is None:
        return natural_text(default_source)
    path = Path(data).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace")
    if path.is_dir():
        return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(path.rglob("*")) if p.is_file())
    return natural_text(data) if data in ("paradise_lost", "shakespeare", "milton") else ""
