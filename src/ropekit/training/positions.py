"""Training-time position strategies: train on ``train_length`` tokens whose position ids span ``[0, target_length)``.

Registered by name in :data:`STRATEGIES`; each is one pure function of a generator. Shapes: every sampler returns
``position_ids`` ``[train_length]`` (int64, strictly increasing, in ``[0, target_length)``) and, given a tokenised
document ``doc`` ``[len(doc)]``, the ``input_ids`` ``[train_length]`` that go with them.

* ``contiguous`` — ``0 .. N-1``; the document's first N tokens.
* ``cream`` — CREAM (Wu et al. 2024, arXiv 2406.07138; verified against bigai-nlco/CREAM@1d15c73 ``src/train.py``).
  Head ids ``0..h-1`` and tail ids ``L-t..L-1`` are always present; one contiguous middle block of ``m = N-h-t``
  ids ends at ``e``, placed by a truncated Gaussian on a scale ``r ∈ [2, 2s]`` (μ = 1+s, σ = 3), then
  ``e ~ U[⌊h + (m-1)·r/2⌋, ⌊r/2·N⌋ - t - 1]``. Two block-size modes, a fair coin each:
  *continuity* (h = t = k, default k = 4s) and *relativity* (h = t = N/3).
  Tokens: head = document start, middle = the tokens at the middle ids' true offsets (the block before the tail
  when the document is shorter), tail = document end.
* ``pose`` — PoSE (Zhu et al. 2024, arXiv 2309.10400; dwzhu-pku/PoSE ``train_pose.py``): two chunks, the first at
  ids ``0..r1-1``, the second shifted by a uniform skip ``u ∈ [0, L-N]``; content of chunk 2 taken from a random
  end point of the document (truncated to ``doc_window`` tokens, default L).
* ``randpos`` — RandPos (Ruoss et al. 2023, arXiv 2305.16843): N distinct ids drawn uniformly from ``[0, L)``, sorted.
* ``longrecipe`` — LongRecipe (Hu et al. 2024, arXiv 2409.00509, App. C Alg. 1; zhiyuanhubj/LongRecipe@bcc7692):
  the document's first N tokens, ids consecutive inside each sentence, random gaps after sentence ends that sum to
  ``L - N`` (last id ``L - 1``). Needs ``sentence_ends`` (see :func:`sentence_end_ids`); docs/training.md lists the
  choices made where the reference code and the paper differ.

Choices where the CREAM spec leaves a question open (docs/training.md has the reasoning):

* The scale r is drawn as the reference code draws it (``scale_sampler="reference"``, the default: inverse CDF of
  the untruncated normal, linearly interpolated on a 1000-point grid over [2, 2s], clamped at the ends and floored),
  since that sampler produced the paper's tables; ``scale_sampler="truncated_normal"`` is the paper's description
  (a continuous truncated normal, not floored).
* The mode coin is tossed **per sample** (the paper's description), not once per 3,000-row ``datasets.map`` batch
  as the reference code does; positions are drawn per sample and per epoch.
* The middle block never takes tokens of the tail: the reference code's ``e < len`` test lets the middle block run
  into the tail tokens (duplicated tokens), a bug reproduced only with ``tail_overlap=True``.
* ``sigma="auto"`` grows σ with the factor (σ = 3·max(1, s/8)), because a fixed σ = 3 leaves whole distance ranges
  unseen at s = 64 (spec §1); the default stays the paper's σ = 3.
* Positions are drawn afresh every epoch from a generator seeded by (seed, epoch, example index): reproducible,
  resumable, and never cached once per example (the reference code's behaviour).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import RopekitError
from ..registry import parse_bool


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    sample: Callable  # (doc: LongTensor | None, N, L, generator, **params) -> (input_ids | None, position_ids)
    params: dict  # name -> default


STRATEGIES: dict[str, Strategy] = {}


def _register(name: str, summary: str, **defaults):
    def wrap(fn):
        STRATEGIES[name] = Strategy(name, summary, fn, defaults)
        return fn

    return wrap


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


@_register("contiguous", "positions 0..N-1 (plain fine-tuning at the training length)")
def sample_contiguous(doc, n: int, target: int, generator: torch.Generator):
    positions = torch.arange(n)
    return (doc[:n] if doc is not None else None), positions


# ---------------------------------------------------------------------------------------------------------------- CREAM


SCALE_SAMPLERS = ("reference", "truncated_normal")


def _flag(value, name: str) -> bool:
    """A boolean parameter given as a Python bool or as CLI text (``--strategy-param tail_overlap=true``)."""
    try:
        return parse_bool(value)
    except ValueError:
        raise RopekitError(f"cream {name}={value!r} is not true or false", f"pass {name}=true or {name}=false") from None


def cream_scale(s: float, sigma: float, generator: torch.Generator, sampler: str = "reference") -> float:
    """The scale variable r ∈ [2, 2s], around μ = 1 + s.

    ``reference`` (bigai-nlco/CREAM ``src/train.py``: ``np.interp(u, cdf, linspace(2, 2s, 1000)).astype(int)``): the
    inverse CDF of the *untruncated* normal, interpolated on a 1000-point grid; ``u`` beyond the grid's CDF range
    clamps to 2 or 2s (so those ends carry the tails' mass) and r is floored to an integer.
    ``truncated_normal``: a continuous normal truncated to [2, 2s] (the paper's description), not floored.
    """
    mu, low, high = 1.0 + s, 2.0, 2.0 * s
    normal = torch.distributions.Normal(torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64))
    u = _uniform(generator)
    if sampler == "reference":
        grid = torch.linspace(low, high, 1000, dtype=torch.float64)
        cdf = normal.cdf(grid)
        if u <= cdf[0]:
            return low
        if u >= cdf[-1]:
            return high
        i = int(torch.searchsorted(cdf, torch.tensor(u, dtype=torch.float64)))
        x0, x1, c0, c1 = grid[i - 1], grid[i], cdf[i - 1], cdf[i]
        return float(math.floor(x0 + (x1 - x0) * (u - c0) / (c1 - c0)))
    if sampler == "truncated_normal":
        lo_cdf, hi_cdf = normal.cdf(torch.tensor(low, dtype=torch.float64)), normal.cdf(torch.tensor(high, dtype=torch.float64))
        p = lo_cdf + u * (hi_cdf - lo_cdf)
        return float(normal.icdf(p.clamp(1e-12, 1 - 1e-12)).clamp(low, high))
    raise RopekitError(f"cream scale_sampler {sampler!r} is unknown", f"use one of: {', '.join(SCALE_SAMPLERS)}")


def cream_blocks(n: int, target: int, generator: torch.Generator, mode: str = "mixed", k: int | None = None,
                 sigma: float | str = 3.0, scale_sampler: str = "reference") -> tuple[int, int, int]:
    """(h, t, e): head size, tail size and the last id of the middle block."""
    s = target / n
    if mode == "mixed":
        mode = "relativity" if _uniform(generator) < 0.5 else "continuity"
    if mode == "relativity":
        h = t = n // 3
    elif mode == "continuity":
        h = t = k if k is not None else min(int(round(4 * s)), n // 8)  # the code's k = 4s, kept well inside N
    else:
        raise RopekitError(f"cream mode {mode!r} is unknown", "use mixed, continuity or relativity")
    if not 1 <= h < n // 2:
        raise RopekitError(f"cream head/tail size {h} does not fit a training length of {n}", f"pass k between 1 and {n // 2 - 1}")
    sigma_value = 3.0 * max(1.0, s / 8.0) if sigma == "auto" else float(sigma)
    m = n - h - t
    r = cream_scale(s, sigma_value, generator, scale_sampler)
    a = r / 2.0
    low = math.floor(h + (m - 1) * a)
    high = math.floor(a * n) - t - 1
    high = max(low, min(high, target - t - 1))
    return h, t, _randint(low, high, generator)


@_register("cream", "CREAM: head, truncated-Gaussian middle block, tail over [0, target)",
           mode="mixed", k=None, sigma=3.0, scale_sampler="reference", tail_overlap=False)
def sample_cream(doc, n: int, target: int, generator: torch.Generator, mode: str = "mixed", k: int | None = None,
                 sigma: float | str = 3.0, scale_sampler: str = "reference", tail_overlap: bool = False):
    h, t, e = cream_blocks(n, target, generator, mode, None if k is None else int(k), sigma, scale_sampler)
    tail_overlap = _flag(tail_overlap, "tail_overlap")
    m = n - h - t
    positions = torch.cat([torch.arange(h), torch.arange(e - m + 1, e + 1), torch.arange(target - t, target)])
    if doc is None:
        return None, positions
    length = doc.numel()
    if length < n:
        raise RopekitError(f"cream needs documents of at least {n} tokens, got {length}", "filter short documents or use contiguous")
    head, tail = doc[:h], doc[length - t:]
    # Middle tokens at their true offsets when the document reaches them without running into the tail, else the
    # block before the tail. The reference code tests only `e < len`, so its middle block can overlap the tail
    # (duplicated tokens): reproduced with tail_overlap=True.
    fits = e < length if tail_overlap else e + 1 <= length - t
    middle = doc[e - m + 1 : e + 1] if fits else doc[length - t - m : length - t]
    return torch.cat([head, middle, tail]), positions


# ----------------------------------------------------------------------------------------------------------------- PoSE


@_register("pose", "PoSE: two chunks, the second shifted by a uniform skip", doc_window=None)
def sample_pose(doc, n: int, target: int, generator: torch.Generator, doc_window: int | None = None):
    if doc is not None:
        doc = doc[: doc_window or target]
        length = doc.numel()
    else:
        length = n
    c = min(length, n)
    if c < n:
        raise RopekitError(f"pose needs documents of at least {n} tokens, got {length}", "filter short documents or use contiguous")
    r1 = _randint(1, (c + 1) // 2, generator)
    skip = _randint(0, target - c, generator)
    positions = torch.cat([torch.arange(r1), torch.arange(r1 + skip, c + skip)])
    if doc is None:
        return None, positions
    end = _randint(c, length, generator)
    return torch.cat([doc[:r1], doc[end - (c - r1) : end]]), positions


# -------------------------------------------------------------------------------------------------------------- RandPos


@_register("randpos", "RandPos: N distinct positions drawn uniformly from [0, target), sorted")
def sample_randpos(doc, n: int, target: int, generator: torch.Generator):
    positions = torch.sort(torch.randperm(target, generator=generator)[:n]).values
    return (doc[:n] if doc is not None else None), positions


# ----------------------------------------------------------------------------------------------------------- LongRecipe


SENTENCE_END_CHARACTERS = (".", "!", "?", "\n")


def sentence_end_ids(tokenizer) -> frozenset[int]:
    """The token ids that end a sentence for LongRecipe: those whose decoded text, trailing spaces and tabs stripped,
    ends in ``.``, ``!``, ``?`` or a newline. Special tokens are excluded; nothing is hard-coded per tokenizer (the
    reference code's Llama-3 ids 13/198/30/0/627 are what this finds for Llama 3)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items() if getattr(token, "special", False)}
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return frozenset(i for i, text in zip(ids, texts) if text.rstrip(" \t").endswith(SENTENCE_END_CHARACTERS))


def sentence_end_offsets(input_ids, end_ids) -> torch.Tensor:
    """Offsets ``[k]`` (int64, increasing) of the tokens of ``input_ids`` that are in ``end_ids`` (a sentence-end set)."""
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    return torch.nonzero(torch.isin(ids, _as_tensor(end_ids))).flatten()


def _as_tensor(values) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.flatten().long()
    return torch.tensor(sorted(int(v) for v in values), dtype=torch.long)


def longrecipe_positions(is_end: torch.Tensor, target: int, generator: torch.Generator, head_chunk: bool = False) -> torch.Tensor:
    """Position ids ``[N]`` for N tokens whose sentence ends are marked in ``is_end`` ``[N]`` (bool).

    Algorithm 1 of the paper on the tokens actually trained on: ids are consecutive inside a sentence (a sentence
    ends *with* its end token) and a gap may follow only an end token that is not the sample's last. The gaps are a
    uniform random weak composition of ``target - N`` over those K slots (stars and bars: K-1 distinct bars among
    ``target - N + K - 1`` cells), so the last id is exactly ``target - 1``. With no slot the ids stay ``0..N-1``.
    ``head_chunk``: the reference code's contiguous head — the first ``h ~ U{1..N/2}`` tokens get ``0..h-1`` with no
    gap inside, and the boundary after the head is a slot of its own (the code's jump there), sentence end or not.
    """
    n = is_end.numel()
    slot = is_end.clone()
    slot[n - 1] = False  # nothing follows the last token
    if head_chunk:
        head = _randint(1, max(1, n // 2), generator)
        slot[:head] = False
        if head < n:
            slot[head - 1] = True
    slots = torch.nonzero(slot).flatten()
    k, total = slots.numel(), target - n
    steps = torch.ones(n, dtype=torch.long)
    steps[0] = 0
    if k and total:
        bars = torch.sort(torch.randperm(total + k - 1, generator=generator)[: k - 1]).values
        edges = torch.cat([torch.tensor([-1]), bars, torch.tensor([total + k - 1])])
        steps[slots + 1] += edges[1:] - edges[:-1] - 1  # each part of the composition: cells between two bars
    return torch.cumsum(steps, 0)


@_register("longrecipe", "LongRecipe: sentence-gapped ids spanning [0, target), gaps only after sentence ends",
           sentence_ends=None, head_chunk=False)
def sample_longrecipe(doc, n: int, target: int, generator: torch.Generator, sentence_ends=None, head_chunk: bool = False):
    if doc is None or sentence_ends is None:
        raise RopekitError("the longrecipe strategy places its gaps at sentence ends, so it needs the document and its sentence ends",
                           "call ropekit.positions.sample('longrecipe', doc, N, L, generator, sentence_ends=...) "
                           "(ropekit train fills them from the tokenizer)")
    if doc.numel() < n:
        raise RopekitError(f"longrecipe needs documents of at least {n} tokens, got {doc.numel()}",
                           "use longer documents (ropekit data select fills rows to the budget) or a shorter --train-length")
    tokens = doc[:n]
    positions = longrecipe_positions(torch.isin(tokens, _as_tensor(sentence_ends)), target, generator, head_chunk)
    return tokens, positions


# ------------------------------------------------------------------------------------------------------------------ API


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise RopekitError(f"unknown position strategy {name!r}", f"use one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def check_params(strategy: Strategy, params: dict) -> dict:
    unknown = sorted(set(params) - set(strategy.params))
    if unknown:
        valid = ", ".join(strategy.params) or "none"
        raise RopekitError(f"unknown parameter {unknown[0]!r} for position strategy {strategy.name!r}", f"valid parameters: {valid}")
    return {**strategy.params, **params}


def check_lengths(train_length: int, target_length: int) -> None:
    if train_length < 2:
        raise RopekitError(f"training length {train_length} is too short", "use at least a few hundred tokens")
    if target_length < train_length:
        raise RopekitError(f"target length {target_length} is shorter than the training length {train_length}",
                           "position strategies spread a training window over a longer target; pass a target ≥ the training length")


def position_ids(strategy: str, train_length: int, target_length: int, generator: torch.Generator | None = None, **params) -> torch.Tensor:
    """Position ids ``[train_length]`` for one training sample under ``strategy`` (public API).

    >>> ids = position_ids("cream", 4096, 32768, torch.Generator().manual_seed(0))
    >>> ids.shape, int(ids[0]), int(ids[-1])
    (torch.Size([4096]), 0, 32767)
    """
    chosen = get_strategy(strategy)
    check_lengths(train_length, target_length)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return chosen.sample(None, train_length, target_length, generator, **check_params(chosen, params))[1]


def sample(strategy: str, doc: torch.Tensor, train_length: int, target_length: int, generator: torch.Generator, **params):
    """``(input_ids [N], position_ids [N])`` for one tokenised document under ``strategy``."""
    chosen = get_strategy(strategy)
    check_lengths(train_length, target_length)
    return chosen.sample(doc, train_length, target_length, generator, **check_params(chosen, params))


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator for one example in one epoch: fresh every epoch, identical on resume and across processes."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_000_007 + index)
