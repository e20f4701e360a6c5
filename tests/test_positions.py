"""Position samplers: invariants over ≥10⁴ draws, the CREAM middle-block distribution, distance coverage."""

import math
import statistics

import numpy as np
import pytest
import torch

import ropekit
from ropekit.training.positions import cream_blocks, cream_scale, position_ids, sample, sample_generator

DRAWS = 10_000


def draws(strategy, n, target, count=DRAWS, **params):
    generator = torch.Generator().manual_seed(1234)
    return [position_ids(strategy, n, target, generator, **params) for _ in range(count)]


@pytest.mark.parametrize("strategy,params", [("contiguous", {}), ("cream", {}), ("cream", {"scale_sampler": "truncated_normal"}),
                                             ("cream", {"mode": "continuity"}), ("pose", {}), ("randpos", {})])
def test_invariants_over_many_draws(strategy, params):
    n, target = 256, 2048
    ids = torch.stack(draws(strategy, n, target, **params))
    assert ids.shape == (DRAWS, n) and ids.dtype == torch.int64
    assert bool((ids[:, 1:] > ids[:, :-1]).all())  # strictly increasing
    assert int(ids.min()) >= 0 and int(ids.max()) < target
    if strategy == "cream":
        assert bool((ids[:, 0] == 0).all()) and bool((ids[:, -1] == target - 1).all())  # head and tail in every sample
    if strategy == "pose":
        assert bool((ids[:, 0] == 0).all())


def test_cream_scale_matches_the_reference_code_simulation():
    """Spec §1 [S] (s = 8, σ = 3, code sampler): P(r=2) ≈ 2.4%, P(r=16) ≈ 1%, E[r] ≈ 8.5."""
    generator = torch.Generator().manual_seed(0)
    r = [cream_scale(8.0, 3.0, generator) for _ in range(DRAWS)]  # the default sampler is the reference code's
    # Tolerances: 4 binomial / normal standard errors at 10⁴ draws, plus the spec's rounding.
    assert abs(sum(x == 2 for x in r) / DRAWS - 0.024) < 4 * math.sqrt(0.024 * 0.976 / DRAWS) + 0.0005
    assert abs(sum(x == 16 for x in r) / DRAWS - 0.010) < 4 * math.sqrt(0.01 * 0.99 / DRAWS) + 0.0005
    assert abs(statistics.mean(r) - 8.5) < 4 * statistics.pstdev(r) / math.sqrt(DRAWS) + 0.05
    assert all(float(x).is_integer() and 2 <= x <= 16 for x in r)


def test_clean_scale_is_a_truncated_normal():
    """Kolmogorov–Smirnov against the analytic truncated normal on [2, 2s], μ = 1+s, σ = 3 (α = 0.1%)."""
    s, sigma = 8.0, 3.0
    generator = torch.Generator().manual_seed(0)
    r = torch.tensor(sorted(cream_scale(s, sigma, generator, "truncated_normal") for _ in range(DRAWS)), dtype=torch.float64)
    normal = torch.distributions.Normal(torch.tensor(1 + s, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64))
    lo, hi = normal.cdf(torch.tensor(2.0, dtype=torch.float64)), normal.cdf(torch.tensor(2 * s, dtype=torch.float64))
    cdf = (normal.cdf(r) - lo) / (hi - lo)
    empirical = torch.arange(1, DRAWS + 1, dtype=torch.float64) / DRAWS
    ks = float(torch.maximum((empirical - cdf).abs(), (empirical - 1 / DRAWS - cdf).abs()).max())
    assert ks < 1.95 / math.sqrt(DRAWS)


@pytest.mark.parametrize("mode,mean,sd", [("continuity", 0.47, 0.18), ("relativity", 0.33, 0.15)])
def test_middle_block_position_matches_the_spec(mode, mean, sd):
    """Spec §1 [S]: middle-block centre 0.47L (sd 0.18L) in continuity mode, 0.33L (sd 0.15L) in relativity (N=4K, s=8)."""
    n, target = 4096, 32768
    generator = torch.Generator().manual_seed(5)
    centres = []
    for _ in range(DRAWS):
        h, t, e = cream_blocks(n, target, generator, mode=mode)
        centres.append((e - (n - h - t) / 2) / target)
    # Stated tolerance: the spec rounds to 0.01; sampling error of the mean at 10⁴ draws is < 0.002.
    assert abs(statistics.mean(centres) - mean) < 0.01 + 4 * sd / math.sqrt(DRAWS)
    assert abs(statistics.pstdev(centres) - sd) < 0.01


def reference_end_ids(mode: str, n: int, target: int, count: int, sigma: float = 3.0, seed: int = 0) -> np.ndarray:
    """The middle block's end id, drawn exactly as bigai-nlco/CREAM ``src/train.py`` (``CREAM``) draws it: numpy's
    interpolated inverse CDF of the untruncated normal on linspace(2, 2s, 1000), ``astype(int)``, then
    ``random.randint(int(h + (m-1)·r/2), r/2·N - t - 1)``."""
    rng = np.random.default_rng(seed)
    s = target // n
    h = t = n // 3 if mode == "relativity" else 4 * s
    m = n - h - t
    x = np.linspace(2, 2 * s, 1000)
    cdf = 0.5 * (1 + np.vectorize(math.erf)((x - (1 + s)) / (sigma * math.sqrt(2))))
    r = np.interp(rng.random(count), cdf, x).astype(int)
    low = (h + (m - 1) * (r / 2)).astype(int)
    high = (r / 2 * n).astype(int) - t - 1
    return rng.integers(low, high + 1)


def ks_distance(a, b) -> float:
    """Two-sample Kolmogorov–Smirnov distance: the largest gap between the two empirical CDFs."""
    a, b = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, side="right") / a.size - np.searchsorted(b, grid, side="right") / b.size).max())


@pytest.mark.parametrize("mode", ["continuity", "relativity"])
def test_default_cream_matches_the_reference_formula(mode):
    """The default sampler gives the reference code's distribution of the middle block's end id (20,000 draws each,
    KS distance below the two-sample critical value at α = 0.1%); the continuous truncated normal does not."""
    n, target, count = 4096, 32768, 20_000
    reference = reference_end_ids(mode, n, target, count)
    generator = torch.Generator().manual_seed(11)
    ours = [cream_blocks(n, target, generator, mode=mode)[2] for _ in range(count)]
    continuous = [cream_blocks(n, target, generator, mode=mode, scale_sampler="truncated_normal")[2] for _ in range(count)]
    critical = 1.95 * math.sqrt(2 / count)  # c(α = 0.001) · √((n1 + n2) / (n1 · n2))
    assert ks_distance(ours, reference) < critical
    assert ks_distance(continuous, reference) > 2 * critical  # the paper-clean option is a different distribution


def test_middle_block_never_takes_tail_tokens_unless_asked():
    """A document a little shorter than the target: the middle block's end id e may fall in the document's last t
    tokens. By default the middle block then takes the tokens before the tail (no token twice); tail_overlap=True
    reproduces the reference code's duplicates (it only checks e < len(doc))."""
    n, target = 64, 512
    doc = torch.arange(target - 10)  # token value == its offset
    seen_overlap = False
    for seed in range(400):
        clean, ids = sample("cream", doc, n, target, torch.Generator().manual_seed(seed), mode="relativity")
        bugged, _ = sample("cream", doc, n, target, torch.Generator().manual_seed(seed), mode="relativity", tail_overlap=True)
        assert clean.unique().numel() == n
        seen_overlap |= bugged.unique().numel() < n
    assert seen_overlap
    with pytest.raises(ropekit.RopekitError, match="tail_overlap"):
        sample("cream", doc, n, target, torch.Generator(), tail_overlap="maybe")


def covered_distances(ids: torch.Tensor, target: int) -> torch.Tensor:
    """Boolean [target]: which relative distances j - i ≥ 0 occur, from the contiguous runs of each sample."""
    covered = torch.zeros(target + 1, dtype=torch.int64)
    for row in ids:
        breaks = torch.nonzero(row[1:] - row[:-1] != 1).flatten() + 1
        starts = torch.cat([torch.tensor([0]), breaks])
        ends = torch.cat([breaks, torch.tensor([row.numel()])]) - 1
        runs = [(int(row[a]), int(row[b])) for a, b in zip(starts, ends)]
        for i, (a0, a1) in enumerate(runs):
            for b0, b1 in runs[i:]:
                lo, hi = max(0, b0 - a1), b1 - a0  # every distance in [lo, hi] occurs between the two runs
                covered[lo] += 1
                covered[hi + 1] -= 1
    return covered.cumsum(0)[:target] > 0


def test_cream_covers_every_distance_up_to_8x():
    n, target = 512, 4096  # s = 8
    assert bool(covered_distances(torch.stack(draws("cream", n, target, count=2000)), target).all())


def test_fixed_sigma_leaves_gaps_at_64x_and_auto_sigma_covers_more():
    n, target = 512, 32768  # s = 64, as in the spec's 256K run
    fixed = covered_distances(torch.stack(draws("cream", n, target, count=1000)), target).float().mean()
    auto = covered_distances(torch.stack(draws("cream", n, target, count=1000, sigma="auto")), target).float().mean()
    assert fixed < 0.95  # the spec's coverage gap
    assert auto > fixed + 0.05


def test_cream_tokens_follow_the_ids():
    n, target = 64, 512
    doc = torch.arange(10_000)  # token value == its offset in the document
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        tokens, ids = sample("cream", doc, n, target, generator)
        # head = document start; middle at its true offsets (doc longer than target); tail = document end
        assert torch.equal(tokens[:4], doc[:4]) and int(tokens[-1]) == 9_999
        middle = tokens[(ids > 100) & (ids < target - 100)]
        mid_ids = ids[(ids > 100) & (ids < target - 100)]
        assert torch.equal(middle, mid_ids)
    short = torch.arange(n)  # a document of exactly N tokens: tokens stay contiguous, only the ids jump
    tokens, ids = sample("cream", short, n, target, generator)
    assert torch.equal(tokens, short) and int(ids[-1]) == target - 1


def test_pose_tokens_and_ids_have_the_same_chunks():
    n, target = 64, 512
    doc = torch.arange(5_000)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        tokens, ids = sample("pose", doc, n, target, generator)
        jump = torch.nonzero(ids[1:] - ids[:-1] != 1).flatten()
        assert jump.numel() <= 1
        cut = int(jump[0]) + 1 if jump.numel() else n
        assert torch.equal(tokens[:cut], doc[:cut])  # chunk 1 = document start
        assert bool((tokens[cut:][1:] - tokens[cut:][:-1] == 1).all())  # chunk 2 contiguous content


def test_positions_are_reproducible_and_fresh_every_epoch():
    a = position_ids("cream", 256, 2048, sample_generator(7, epoch=0, index=3))
    b = position_ids("cream", 256, 2048, sample_generator(7, epoch=0, index=3))
    c = position_ids("cream", 256, 2048, sample_generator(7, epoch=1, index=3))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("call,expected", [
    (lambda: position_ids("zigzag", 256, 2048), "unknown position strategy"),
    (lambda: position_ids("cream", 256, 128), "shorter than the training length"),
    (lambda: position_ids("cream", 256, 2048, width=3), "unknown parameter 'width'"),
    (lambda: position_ids("cream", 256, 2048, mode="diagonal"), "cream mode"),
    (lambda: position_ids("cream", 256, 2048, scale_sampler="gamma"), "scale_sampler"),
    (lambda: sample("pose", torch.arange(100), 256, 2048, torch.Generator()), "at least 256 tokens"),
])
def test_bad_strategy_inputs(call, expected):
    with pytest.raises(ropekit.RopekitError, match=expected):
        call()
