"""Perplexity vs length on long natural text.

For each length L, ``windows`` windows of L consecutive tokens are taken at evenly spaced offsets of the text; the
score is exp(mean NLL) of the last ``tail`` tokens of each window, i.e. of tokens that see at least L - tail tokens
of context. This is the loss of *late* positions, which is what degrades when a model is run beyond its window
(the loss over a whole window is dominated by early, short-context tokens).

One forward serves every length. In a causal LM the logits at position p depend only on tokens 0..p, so the last
``tail`` tokens of a window of length L starting at ``offset`` are scored identically inside one longer forward from
the same offset. This holds when the model's RoPE does not depend on the sequence length; for ``dynamic`` and
``longrope`` rope types (whose frequencies change with the longest position in the forward) each length gets its own
forward, with the rope state reset before it (see :func:`ropekit.extension.reset_rope_state`). ``tests/test_eval.py`` checks both paths against separate forwards.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..extension import reset_rope_state, rope_depends_on_length
from ..corpus import text_tokens
from .scoring import model_device
from .tasks import Task, register

def window_offsets(total: int, length: int, windows: int) -> list[int]:
    if windows == 1 or total <= length:
        return [0]
    return [k * (total - length) // (windows - 1) for k in range(windows)]


@torch.no_grad()
def tail_nll(model, ids: list[int], ends: list[int], tail: int) -> dict[int, tuple[float, int]]:
    """For each ``end`` in ``ends``: (sum of NLL, count) of the tokens at positions [end - tail, end) of ``ids``.

    One forward over ``ids[:max(ends)]``; only the needed rows go through the output layer.
    """
    device = model_device(model)
    x = torch.tensor([ids[: max(ends)]], device=device)
    reset_rope_state(model)
    hidden = model.get_decoder()(input_ids=x, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    out = {}
    for end in ends:
        n = min(tail, end - 1)
        logits = head(hidden[0, end - n - 1 : end - 1]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        out[end] = (torch.nn.functional.cross_entropy(logits, x[0, end - n : end], reduction="sum").item(), n)
    return out


def run_perplexity(model, tokenizer, lengths: list[int], windows: int = 3, tail: int = 1024, source: str = "paradise_lost",
                   progress: bool = True) -> dict:
    """``{"lengths": {"L": {"ppl": float, "nll": float, "windows": [...]}}}`` on ``source`` (a named corpus or a file)."""
    lengths = sorted(lengths)
    tokens = text_tokens(tokenizer, source, min_tokens=max(lengths))
    separate = rope_depends_on_length(model)
    offsets = window_offsets(len(tokens), max(lengths), windows)
    sums = {length: [0.0, 0, []] for length in lengths}
    # One forward per window (per length and window for length-dependent RoPE).
    forwards = [(offset, [length]) for offset in offsets for length in lengths] if separate else [(offset, lengths) for offset in offsets]
    for offset, ends in tqdm(forwards, desc="ppl", disable=not progress, leave=False):
        for end, (nll, n) in tail_nll(model, tokens[offset:offset + max(ends)], ends, tail).items():
            sums[end][0] += nll
            sums[end][1] += n
            sums[end][2].append({"offset": offset, "nll": round(nll / n, 5)})
    out = {"task": "ppl", "source": source, "windows": windows, "tail": tail, "one_forward": not separate, "lengths": {}}
    for length, (total, count, rows) in sums.items():
        mean = total / count
        out["lengths"][str(length)] = {"ppl": math.exp(mean), "nll": mean, "windows": rows}
    return out


def _run(model, tokenizer, lengths, seed=0, progress=True, windows=3, tail=1024, source="paradise_lost"):
    result = run_perplexity(model, tokenizer, list(lengths), windows=windows, tail=tail, source=source, progress=progress)
    return {int(length): {"score": r["ppl"], "nll": r["nll"], "n": len(r["windows"]), "windows": r["windows"], "tail": tail, "source": source}
            for length, r in result["lengths"].items()}


register(Task("ppl", "perplexity of the last `tail` tokens of windows of natural text (one forward serves all lengths)",
              "perplexity", False, _run, {"windows": 3, "tail": 1024, "source": "paradise_lost"}, kind="natural"))
