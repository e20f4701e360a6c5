"""Paired verdicts: is row A better than row B (or at least as good) when both were evaluated on the SAME items?

The lab scores every row on the same evaluation items (same seeds, same lengths), so two rows can be compared item by
item: the paired difference cancels the items' own difficulty, which two independent accuracies do not. This module
turns per-item outcomes into a verdict with a stated rule; it imports only numpy and the standard library, and
:mod:`ropekit.studies.lab.claims` decides every claim with it.

**Inputs.** For each pre-training seed, two equal-length sequences of per-item outcomes, A's and B's, item ``i`` of
both being the same item: booleans (retrieval: correct or not; counted as 1/0) or floats (e.g. per-item losses, with
``higher_is_better=False``).

**Differences.** Per item, A's advantage ``d = a − b`` when higher is better, ``d = b − a`` when lower is better, so a
positive difference always favours A. Per seed, ``diff`` is the mean of ``d``; pooled, the mean of ``d`` over the
items of all seeds (each item weighs the same).

**Intervals.** A paired percentile bootstrap over items, for booleans and floats alike (no normal approximation):
``resamples`` times (default 2,000), each seed's items are drawn with replacement, within their seed; a seed's
interval is the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of its resampled means, the pooled interval those
of the pooled means of the same draws (the items of all seeds pooled as one paired sample, resampled within seed).
With ``shared_items=True`` (every seed was scored on the SAME items, item ``i`` of each seed being one item: the
lab's dev items, or perplexity windows, which take no seed) one draw of item indices serves every seed, so the
pooled interval resamples items, not item × seed pairs, and identical items are not counted as independent
evidence. The generator is ``numpy.random.default_rng(rng_seed)`` (default 0): the same input gives the same
intervals.

**Verdicts** (``claim``):

* ``"better"`` (A > B): **confirmed** when every seed's ``diff`` is above 0 AND the pooled interval lies above 0;
  **refuted** when every seed's ``diff`` is below 0 AND the pooled interval lies below 0; **tie** otherwise — seeds
  that disagree (or a seed with ``diff`` exactly 0), or a pooled interval that contains 0.
* ``"at_least"`` (A ≥ B, non-inferiority with ``margin`` ≥ 0 in the outcomes' units): **confirmed** when the pooled
  interval's lower bound is above ``−margin``; **refuted** when its upper bound is below ``−margin`` (A is behind by
  more than the margin); **tie** otherwise (the interval reaches below ``−margin`` without lying below it: not shown
  either way). Seed agreement is reported but not required.

**Returned dict** (JSON-able; written into the lab's ``results.json`` once the claims use it)::

    {
      "claim": "better" | "at_least",
      "higher_is_better": bool,
      "margin": float,                  # 0.0 for "better"
      "level": float,                   # 0.95
      "method": "paired bootstrap over items, resampled within seed",   # "…, one draw for every seed (shared items)"
      "shared_items": bool,
      "resamples": int,                 # 2000
      "rng_seed": int,                  # 0
      "seeds": [                        # one entry per seed, in input order
        {"seed": int,                   # the index in the input
         "n": int,                      # items
         "mean_a": float, "mean_b": float,   # raw means (booleans: fraction correct), not oriented
         "diff": float,                 # mean of A's advantage d (positive favours A)
         "low": float, "high": float},  # its bootstrap interval
        ...
      ],
      "pooled": {"n": int, "mean_a": float, "mean_b": float, "diff": float, "low": float, "high": float},
      "favour_a": int, "favour_b": int, "even": int,   # seeds with diff > 0, < 0, == 0
      "verdict": "confirmed" | "refuted" | "tie",
      "reason": str                     # one line: which rule decided, with the numbers
    }

Differences of booleans are fractions (0.05 = 5 points of accuracy); multiply by 100 for percentage points.
:func:`seed_spread` summarises one cell across seeds (the mean and the per-seed min and max).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CLAIMS = ("better", "at_least")
METHOD = "paired bootstrap over items, resampled within seed"
SHARED = "paired bootstrap over items, one draw for every seed (shared items)"
_CHUNK = 256  # resamples drawn at a time (bounds memory for long item lists)


def _outcomes(values, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what}: a non-empty flat sequence of per-item outcomes is needed, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what}: outcomes must be finite numbers or booleans")
    return array


def _paired(per_seed_a, per_seed_b, higher_is_better: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if isinstance(per_seed_a, (str, bytes)) or isinstance(per_seed_b, (str, bytes)):
        raise ValueError("per-seed outcomes must be sequences of per-item sequences")
    if len(per_seed_a) != len(per_seed_b) or len(per_seed_a) == 0:
        raise ValueError(f"A and B need the same number of seeds (at least one): {len(per_seed_a)} vs {len(per_seed_b)}")
    seeds = []
    for index, (a, b) in enumerate(zip(per_seed_a, per_seed_b)):
        a, b = _outcomes(a, f"seed {index}, A"), _outcomes(b, f"seed {index}, B")
        if a.shape != b.shape:
            raise ValueError(f"seed {index}: A has {a.size} items, B {b.size}; paired outcomes need the same items")
        seeds.append((a, b, (a - b) if higher_is_better else (b - a)))
    return seeds


def _num(x: float) -> str:
    return f"{x:+.4g}"


def paired_verdict(per_seed_a: Sequence[Sequence], per_seed_b: Sequence[Sequence], higher_is_better: bool = True,
                   claim: str = "better", margin: float = 0.0, resamples: int = 2000, level: float = 0.95,
                   rng_seed: int = 0, shared_items: bool = False) -> dict:
    """Compare A with B on paired per-item outcomes, one pair of sequences per seed; see the module docstring for
    the rule and the returned dict. ``claim``: ``"better"`` (A > B) or ``"at_least"`` (A ≥ B − ``margin``; a margin
    is refused for ``"better"``). ``shared_items``: every seed holds the same items in the same order."""
    if claim not in CLAIMS:
        raise ValueError(f"claim must be one of {CLAIMS}, got {claim!r}")
    if not (margin >= 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a finite number ≥ 0, got {margin!r}")
    if claim == "better" and margin:
        raise ValueError("a margin applies to claim='at_least' only")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if int(resamples) < 1:
        raise ValueError(f"resamples must be ≥ 1, got {resamples!r}")
    resamples = int(resamples)
    seeds = _paired(per_seed_a, per_seed_b, higher_is_better)
    quantiles = [(1 - level) / 2, (1 + level) / 2]
    rng = np.random.default_rng(rng_seed)

    # one set of draws: each seed's resampled sums give its own interval and, summed over seeds, the pooled one
    sums = np.zeros((len(seeds), resamples))
    if shared_items:
        if len({d.size for _, _, d in seeds}) != 1:
            raise ValueError("shared_items: every seed must hold the same items, but their counts differ")
        size = seeds[0][2].size
        for start in range(0, resamples, _CHUNK):  # one draw of item indices for every seed
            count = min(_CHUNK, resamples - start)
            draw = rng.integers(0, size, size=(count, size))
            for s, (_, _, d) in enumerate(seeds):
                sums[s, start:start + count] = d[draw].sum(axis=1)
    else:
        for s, (_, _, d) in enumerate(seeds):
            for start in range(0, resamples, _CHUNK):
                count = min(_CHUNK, resamples - start)
                sums[s, start:start + count] = d[rng.integers(0, d.size, size=(count, d.size))].sum(axis=1)

    rows = []
    for s, (a, b, d) in enumerate(seeds):
        low, high = np.quantile(sums[s] / d.size, quantiles)
        rows.append({"seed": s, "n": int(d.size), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
                     "diff": float(d.mean()), "low": float(low), "high": float(high)})
    total = sum(d.size for _, _, d in seeds)
    low, high = np.quantile(sums.sum(axis=0) / total, quantiles)
    all_a, all_b, all_d = (np.concatenate([seed[k] for seed in seeds]) for k in range(3))
    pooled = {"n": int(total), "mean_a": float(all_a.mean()), "mean_b": float(all_b.mean()), "diff": float(all_d.mean()),
              "low": float(low), "high": float(high)}

    favour_a = sum(r["diff"] > 0 for r in rows)
    favour_b = sum(r["diff"] < 0 for r in rows)
    even = len(rows) - favour_a - favour_b
    verdict, reason = _decide(claim, margin, pooled, favour_a, favour_b, even, len(rows), level)
    return {"claim": claim, "higher_is_better": bool(higher_is_better), "margin": float(margin), "level": float(level),
            "method": SHARED if shared_items else METHOD, "shared_items": bool(shared_items), "resamples": resamples, "rng_seed": int(rng_seed), "seeds": rows, "pooled": pooled,
            "favour_a": favour_a, "favour_b": favour_b, "even": even, "verdict": verdict, "reason": reason}


def _decide(claim: str, margin: float, pooled: dict, favour_a: int, favour_b: int, even: int, seeds: int,
            level: float) -> tuple[str, str]:
    interval = f"pooled Δ {_num(pooled['diff'])} [{_num(pooled['low'])}, {_num(pooled['high'])}] ({level:.0%})"
    if claim == "at_least":
        bound = _num(-margin)
        if pooled["low"] > -margin:
            return "confirmed", f"A ≥ B within margin {margin:g}: {interval}, lower bound above {bound}"
        if pooled["high"] < -margin:
            return "refuted", f"A behind B by more than margin {margin:g}: {interval} lies below {bound}"
        return "tie", f"not shown either way: {interval} straddles {bound}"
    if favour_a == seeds and pooled["low"] > 0:
        return "confirmed", f"A better: every seed favours A ({favour_a}/{seeds}) and {interval} excludes 0"
    if favour_b == seeds and pooled["high"] < 0:
        return "refuted", f"B better: every seed favours B ({favour_b}/{seeds}) and {interval} excludes 0"
    if favour_a < seeds and favour_b < seeds:
        return "tie", f"seeds disagree ({favour_a} favour A, {favour_b} favour B, {even} even of {seeds}); {interval}"
    return "tie", f"within noise: every seed favours {'A' if favour_a == seeds else 'B'} but {interval} contains 0"


def seed_spread(per_seed: Sequence) -> dict:
    """One cell across seeds: ``{"mean", "min", "max", "seeds", "n"}``. Each entry of ``per_seed`` is a seed's score
    (a number) or its per-item outcomes (a sequence, summarised by its mean; ``n`` then counts the items of all
    seeds, else it is ``None``). ``mean`` weighs every seed the same (as the lab's seed-mean tables do); ``min`` and
    ``max`` are the extreme seed values."""
    if isinstance(per_seed, (str, bytes)) or len(per_seed) == 0:
        raise ValueError("seed_spread needs one value (or one sequence of outcomes) per seed")
    scalars = [np.ndim(entry) == 0 for entry in per_seed]
    if any(scalars) and not all(scalars):
        raise ValueError("seed_spread: give every seed as a number or every seed as outcomes, not both")
    if all(scalars):
        values, n = [float(entry) for entry in per_seed], None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"seed_spread: seed values must be finite numbers, got {list(per_seed)!r}")
    else:
        outcomes = [_outcomes(entry, f"seed {index}") for index, entry in enumerate(per_seed)]
        values, n = [float(o.mean()) for o in outcomes], sum(int(o.size) for o in outcomes)
    return {"mean": float(np.mean(values)), "min": min(values), "max": max(values), "seeds": values, "n": n}
