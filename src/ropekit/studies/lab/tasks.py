"""The lab's evaluation tasks, ``lab-passkey``, ``lab-kv`` and ``lab-bind`` (key–value retrieval among near-miss
keys, with numbers in the haystack): items from :mod:`ropekit.studies.lab.data`'s generators (evaluation split),
scored by teacher forcing like the suite's passkey/kv, with the accuracy by key length, by depth, over the middle
third and over the needles beyond the native window (``far``).

Importing this module registers the tasks in the evaluation task registry (:func:`ropekit.eval.tasks.register`);
``import ropekit.studies.lab`` imports it, so the tasks exist whenever the lab does.
"""

from __future__ import annotations

import random

from ...eval.scoring import score_answers
from ...eval.tasks import Task, evenly_spaced, register
from .data import bind_sequence, check_lab_tokenizer, kv_sequence, passkey_sequence


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation tasks (registered in the suite's task registry; scored by teacher forcing like passkey/kv)


def _score(model, tokenizer, items: list[dict], batch_size: int) -> list[dict]:
    scored = score_answers(model, [(s["context"], s["answer"]) for s in items], batch_size=batch_size)
    return [{**{k: v for k, v in s.items() if k not in ("context", "answer")}, "correct": r.correct,
             "answer_nll": round(r.answer_nll, 4), "value": tokenizer.decode(s["answer"]), "predicted": tokenizer.decode(r.predicted)}
            for s, r in zip(items, scored)]


def _far(model, rows: list[dict]) -> dict:
    """Accuracy over the items whose needle (or gold pair) sits at least the native window before the answer: the
    relative distances a model that cannot extrapolate has never seen."""
    from ...extension import native_length_of

    native = native_length_of(model.config)
    far = [r["correct"] for r in rows if r["distance"] >= native]
    return {"far": _percent(far) if far else None, "far_n": len(far)}


def run_lab_passkey(model, tokenizer, lengths, seed: int = 0, progress: bool = True, trials: int = 100, batch_size: int = 10) -> dict:
    """Pass-key accuracy per length; depths evenly spread over [0, 1], 1–5 digits; also reported by key length and
    for the needles at least the native window away from the answer (``far``)."""
    from tqdm.auto import tqdm

    check_lab_tokenizer(tokenizer, "lab-passkey")
    depths = evenly_spaced(10)
    out = {}
    for length in tqdm(list(lengths), desc="lab-passkey", disable=not progress, leave=False):
        items = [passkey_sequence(random.Random(f"lab-eval-passkey-{seed}-{length}-{t}"), length, "eval", depth=depths[t % len(depths)])
                 for t in range(trials)]
        rows = _score(model, tokenizer, items, batch_size)
        by_digits = {str(k): _percent([r["correct"] for r in rows if r["digits"] == k]) for k in sorted({r["digits"] for r in rows})}
        out[length] = {"score": _percent([r["correct"] for r in rows]), "n": len(rows), "by_digits": by_digits, **_far(model, rows),
                       "samples": rows}
    return out


def middle_third(depth: float) -> bool:
    return 1 / 3 <= depth <= 2 / 3


def run_lab_kv(model, tokenizer, lengths, seed: int = 0, progress: bool = True, pairs: int = 9, trials: int = 12,
               batch_size: int = 12) -> dict:
    """Key–value accuracy per length: ``trials`` items per gold slot (slots at evenly spaced depths); ``positions``
    is accuracy per depth, ``middle_third`` the accuracy over the slots with depth in [1/3, 2/3] and ``far`` over the
    gold pairs at least the native window away from the answer."""
    from tqdm.auto import tqdm

    check_lab_tokenizer(tokenizer, "lab-kv")
    out = {}
    for length in tqdm(list(lengths), desc="lab-kv", disable=not progress, leave=False):
        items = [kv_sequence(random.Random(f"lab-eval-kv-{seed}-{length}-{g}-{t}"), length, "eval", pairs=pairs, gold=g)
                 for g in range(pairs) for t in range(trials)]
        rows = _score(model, tokenizer, items, batch_size)
        depths = evenly_spaced(pairs)
        positions = {str(d): _percent([r["correct"] for r in rows if r["gold"] == g]) for g, d in enumerate(depths)}
        out[length] = {"score": _percent([r["correct"] for r in rows]), "n": len(rows), "positions": positions,
                       "middle_third": _percent([r["correct"] for r in rows if middle_third(r["depth"])]),
                       "middle_n": sum(middle_third(r["depth"]) for r in rows), **_far(model, rows), "samples": rows}
    return out


def run_lab_bind(model, tokenizer, lengths, seed: int = 0, progress: bool = True, pairs: int = 8, near: int = 4, symbols: int = 2,
                 min_digits: int = 1, max_digits: int = 4, density: float = 0.05, filler: str = "phrase", trials: int = 12,
                 batch_size: int = 12) -> dict:
    """Binding accuracy per length (:func:`~ropekit.studies.lab.data.bind_sequence`: ``pairs`` pairs of
    ``symbols``-symbol keys, ``near`` of them near misses of the asked key, numbers in the haystack at ``density``):
    ``trials`` items per gold slot, in slot-major order; ``positions``, ``middle_third`` and ``far`` as for lab-kv.
    ``lured``: the share of items whose first predicted digit is a near-miss value's first digit (not the gold's) —
    the wrong answers that took a near miss's value."""
    from tqdm.auto import tqdm

    check_lab_tokenizer(tokenizer, "lab-bind")
    out = {}
    for length in tqdm(list(lengths), desc="lab-bind", disable=not progress, leave=False):
        items = [bind_sequence(random.Random(f"lab-eval-bind-{seed}-{length}-{g}-{t}"), length, "eval", pairs=pairs, near=near,
                               symbols=symbols, gold=g, min_digits=min_digits, max_digits=max_digits, density=density, filler=filler)
                 for g in range(pairs) for t in range(trials)]
        # the slots' keys and values stay out of the samples (results.json); only the near misses' first digits matter
        lures = [{tokenizer.decode(v[:1]) for v, kind in zip(s.pop("values"), s.pop("kinds")) if kind == "near"} - {tokenizer.decode(s["answer"][:1])}
                 for s in items]
        for s in items:
            s.pop("keys")
        rows = _score(model, tokenizer, items, batch_size)
        for row, lure in zip(rows, lures):
            row["lured"] = not row["correct"] and row["predicted"][:1] in lure
        depths = evenly_spaced(pairs)
        positions = {str(d): _percent([r["correct"] for r in rows if r["gold"] == g]) for g, d in enumerate(depths)}
        out[length] = {"score": _percent([r["correct"] for r in rows]), "n": len(rows), "positions": positions,
                       "middle_third": _percent([r["correct"] for r in rows if middle_third(r["depth"])]),
                       "middle_n": sum(middle_third(r["depth"]) for r in rows), **_far(model, rows),
                       "lured": _percent([r["lured"] for r in rows]), "samples": rows}
    return out


def _percent(flags: list[bool]) -> float:
    return 100.0 * sum(flags) / len(flags) if flags else 0.0


register(Task("lab-passkey", "lab pass key: 1–5 digits after <key> in a repeated-phrase haystack (lab tokenizer only)",
              "accuracy %", True, run_lab_passkey, {"trials": 100, "batch_size": 10}))
register(Task("lab-kv", "lab key–value retrieval: 9 pairs at evenly spaced depths, one asked (lab tokenizer only)",
              "accuracy %", True, run_lab_kv, {"pairs": 9, "trials": 12, "batch_size": 12}))
register(Task("lab-bind", "lab binding: 8 pairs of two-symbol keys, 4 near misses of the asked key, numbers in the haystack "
              "(lab tokenizer only)", "accuracy %", True, run_lab_bind,
              {"pairs": 8, "near": 4, "symbols": 2, "min_digits": 1, "max_digits": 4, "density": 0.05, "filler": "phrase",
               "trials": 12, "batch_size": 12}))
