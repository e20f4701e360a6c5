"""Paired verdicts (ropekit.studies.lab.verdicts) on synthetic tables whose true differences are known: confirmed,
refuted, a tie within noise, seeds that disagree, non-inferiority with a margin, per-item losses (lower is better),
items shared by every seed, determinism, and the per-cell seed summary."""

import json
import math
import random

import numpy as np
import pytest

from ropekit.studies.lab.verdicts import paired_verdict, seed_spread


def exact(correct: int, n: int, salt: str) -> list[bool]:
    """Exactly ``correct`` of ``n`` items right, in an order fixed by ``salt``: the seed's true accuracy is known."""
    flags = [i < correct for i in range(n)]
    random.Random(salt).shuffle(flags)
    return flags


def table(counts: list[tuple[int, int]], n: int = 300) -> tuple[list, list]:
    """One seed per (A correct, B correct); A and B are shuffled independently, so their errors are not aligned."""
    return ([exact(a, n, f"a-{s}") for s, (a, _) in enumerate(counts)],
            [exact(b, n, f"b-{s}") for s, (_, b) in enumerate(counts)])


def paired_half_width(a, b) -> float:
    d = np.concatenate(a).astype(float) - np.concatenate(b).astype(float)
    return 1.96 * d.std() / math.sqrt(d.size)


def test_clearly_better_row_is_confirmed_and_intervals_hold_the_true_difference():
    a, b = table([(270, 180)] * 3)  # 90% vs 60% on every seed: true difference 0.3
    v = paired_verdict(a, b)
    assert v["verdict"] == "confirmed" and (v["favour_a"], v["favour_b"], v["even"]) == (3, 0, 0)
    assert v["reason"].startswith("A better: every seed favours A (3/3)")
    for row in v["seeds"]:
        assert row["n"] == 300 and row["mean_a"] == pytest.approx(0.9) and row["mean_b"] == pytest.approx(0.6)
        assert row["diff"] == pytest.approx(0.3) and 0 < row["low"] < 0.3 < row["high"] < 0.45
    pooled = v["pooled"]
    assert pooled["n"] == 900 and pooled["diff"] == pytest.approx(0.3) and pooled["low"] < 0.3 < pooled["high"]
    # the pooled interval is as wide as the paired standard error says (resampling within seed, all items pooled)
    assert (pooled["high"] - pooled["low"]) / 2 == pytest.approx(paired_half_width(a, b), rel=0.15)
    assert pooled["high"] - pooled["low"] < v["seeds"][0]["high"] - v["seeds"][0]["low"]  # pooling narrows it
    assert (v["claim"], v["margin"], v["level"], v["resamples"], v["rng_seed"]) == ("better", 0.0, 0.95, 2000, 0)
    assert json.loads(json.dumps(v)) == v  # goes into results.json as it is


def test_clearly_worse_row_is_refuted():
    b, a = table([(270, 180)] * 3)
    v = paired_verdict(a, b)
    assert v["verdict"] == "refuted" and v["favour_b"] == 3 and v["reason"].startswith("B better")
    assert v["pooled"]["diff"] == pytest.approx(-0.3) and v["pooled"]["low"] < -0.3 < v["pooled"]["high"] < 0


def test_difference_within_noise_is_a_tie_even_when_every_seed_leans_the_same_way():
    a, b = table([(212, 210)] * 3)  # 70.7% vs 70%: every seed favours A by 2 items of 300
    v = paired_verdict(a, b)
    assert v["favour_a"] == 3 and v["verdict"] == "tie" and v["reason"].startswith("within noise")
    assert v["pooled"]["low"] < 0 < v["pooled"]["high"]
    assert v["pooled"]["low"] < 2 / 300 < v["pooled"]["high"]
    even = paired_verdict(*table([(210, 210)] * 3))
    assert (even["verdict"], even["even"], even["pooled"]["diff"]) == ("tie", 3, 0.0)
    assert even["reason"].startswith("seeds disagree (0 favour A, 0 favour B, 3 even of 3)")


def test_seeds_that_disagree_are_a_tie_even_with_a_pooled_interval_above_zero():
    a, b = table([(270, 180), (270, 180), (180, 200)])  # two seeds +0.3, one −0.067
    v = paired_verdict(a, b)
    assert [round(r["diff"], 3) for r in v["seeds"]] == [0.3, 0.3, -0.067]
    assert v["pooled"]["low"] > 0  # the pooled interval alone would confirm ...
    assert v["verdict"] == "tie" and v["reason"].startswith("seeds disagree (2 favour A, 1 favour B, 0 even of 3)")  # ... the seeds do not
    assert paired_verdict(a[:2], b[:2])["verdict"] == "confirmed"  # without the dissenting seed it holds


def test_at_least_with_a_margin():
    a, b = table([(234, 240)] * 3)  # 78% vs 80%: A behind by 0.02
    near = paired_verdict(a, b, claim="at_least", margin=0.1)
    assert near["verdict"] == "confirmed" and near["margin"] == 0.1 and near["pooled"]["low"] > -0.1
    assert near["pooled"]["low"] < -0.02 < near["pooled"]["high"]
    strict = paired_verdict(a, b, claim="at_least", margin=0.0)  # same numbers, no margin: not shown either way
    assert strict["verdict"] == "tie" and strict["pooled"]["low"] < 0 < strict["pooled"]["high"]
    assert strict["pooled"] == near["pooled"]  # the margin moves the bar, not the interval
    short = paired_verdict(a, b, claim="at_least", margin=0.03)  # Δ −0.02 is inside the margin, its interval is not
    assert short["verdict"] == "tie" and short["pooled"]["low"] < -0.03 < short["pooled"]["diff"]
    assert short["reason"].startswith("not shown either way")
    assert paired_verdict(a, b)["verdict"] == "tie"  # and "A better" is not shown
    far_a, far_b = table([(150, 240)] * 3)  # 50% vs 80%: behind by far more than the margin
    far = paired_verdict(far_a, far_b, claim="at_least", margin=0.05)
    assert far["verdict"] == "refuted" and far["pooled"]["high"] < -0.05 and far["reason"].startswith("A behind B")
    better_a, better_b = table([(270, 180)] * 3)
    assert paired_verdict(better_a, better_b, claim="at_least", margin=0.02)["verdict"] == "confirmed"


def test_per_item_losses_lower_is_better_and_the_pairing_matters():
    """Per-item losses: item difficulty spreads losses over 1–5, B is worse than A by exactly 0.2 on average. Only
    a paired comparison sees a 0.2 difference under a spread of 4."""
    per_a, per_b = [], []
    for s in range(3):
        rng = random.Random(f"loss-{s}")
        base = [rng.uniform(1, 5) for _ in range(50)]
        noise = [rng.gauss(0, 0.1) for _ in range(50)]
        shuffled = noise[:]
        rng.shuffle(shuffled)  # A's noise is B's, reordered: the mean difference is exactly 0.2
        per_a.append([x + e for x, e in zip(base, shuffled)])
        per_b.append([x + 0.2 + e for x, e in zip(base, noise)])
    v = paired_verdict(per_a, per_b, higher_is_better=False)
    assert v["verdict"] == "confirmed" and not v["higher_is_better"]
    assert v["pooled"]["diff"] == pytest.approx(0.2) and v["pooled"]["mean_a"] < v["pooled"]["mean_b"]
    assert v["pooled"]["low"] < 0.2 < v["pooled"]["high"] and v["pooled"]["high"] - v["pooled"]["low"] < 0.1
    for row in v["seeds"]:
        assert row["diff"] == pytest.approx(0.2) and row["low"] < 0.2 < row["high"]
    unpaired = 1.96 * math.sqrt(np.var(np.concatenate(per_a)) / 150 + np.var(np.concatenate(per_b)) / 150)
    assert unpaired > 0.2  # two independent means could not tell them apart
    higher = paired_verdict(per_a, per_b, higher_is_better=True)  # read as scores, the same numbers favour B
    assert higher["verdict"] == "refuted" and higher["pooled"]["diff"] == pytest.approx(-0.2)


def test_items_shared_by_every_seed_are_not_counted_as_independent():
    """Three seeds scored on the SAME 300 items with the same outcomes: one sample's worth of evidence. Resampled
    within seed the pooled interval narrows as if there were 900 items; resampled jointly it keeps one seed's width."""
    a, b = table([(240, 225)])
    a, b = a * 3, b * 3
    apart, joint = paired_verdict(a, b), paired_verdict(a, b, shared_items=True)
    one = paired_verdict(a[:1], b[:1])
    width = lambda v: v["pooled"]["high"] - v["pooled"]["low"]  # noqa: E731
    assert joint["shared_items"] and not apart["shared_items"] and joint["method"].endswith("(shared items)")
    assert joint["pooled"]["diff"] == apart["pooled"]["diff"] and joint["seeds"][0]["diff"] == one["seeds"][0]["diff"]
    assert width(joint) == pytest.approx(width(one), rel=0.15) and width(apart) < 0.75 * width(joint)
    with pytest.raises(ValueError, match="shared_items"):
        paired_verdict([a[0], a[1][:-1]], [b[0], b[1][:-1]], shared_items=True)


def test_same_input_same_interval():
    a, b = table([(240, 225), (250, 230)])
    first, again = paired_verdict(a, b), paired_verdict([list(x) for x in a], [list(x) for x in b])
    assert first == again
    as_ints = paired_verdict([[int(x) for x in s] for s in a], [[int(x) for x in s] for s in b])
    assert as_ints == first  # booleans count as 1/0
    other = paired_verdict(a, b, rng_seed=1)
    assert other["pooled"]["diff"] == first["pooled"]["diff"] and other["verdict"] == first["verdict"]
    assert (other["pooled"]["low"], other["pooled"]["high"]) != (first["pooled"]["low"], first["pooled"]["high"])


def test_inputs_are_checked():
    a, b = table([(200, 200)] * 2)
    with pytest.raises(ValueError, match="same number of seeds"):
        paired_verdict(a, b[:1])
    with pytest.raises(ValueError, match="same items"):
        paired_verdict(a, [b[0], b[1][:-1]])
    with pytest.raises(ValueError, match="claim must be"):
        paired_verdict(a, b, claim="worse")
    with pytest.raises(ValueError, match="margin applies to claim='at_least' only"):
        paired_verdict(a, b, margin=0.1)
    with pytest.raises(ValueError, match="finite"):
        paired_verdict([[1.0, float("nan")]], [[1.0, 2.0]], higher_is_better=False)


def test_seed_spread_summarises_a_cell():
    assert seed_spread([40, 60, 50]) == {"mean": 50.0, "min": 40.0, "max": 60.0, "seeds": [40.0, 60.0, 50.0], "n": None}
    cell = seed_spread([exact(90, 100, "x"), exact(60, 100, "y"), [True, False]])
    assert cell["seeds"] == pytest.approx([0.9, 0.6, 0.5]) and cell["mean"] == pytest.approx(2 / 3)  # seeds weigh the same
    assert (cell["min"], cell["max"], cell["n"]) == (pytest.approx(0.5), pytest.approx(0.9), 202)
    with pytest.raises(ValueError, match="not both"):
        seed_spread([0.5, [True, False]])
    with pytest.raises(ValueError, match="one value"):
        seed_spread([])
