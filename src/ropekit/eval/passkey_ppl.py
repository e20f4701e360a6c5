"""Passkey retrieval and perplexity from the same forward pass: the task of the default ``ropekit compare``.

One sample of ``length`` tokens is a window of natural text (Milton's *Paradise Lost* by default) with a pass key
planted early in it, the natural text running on after it, and the question at the end:

    [passkey intro] [text …] [needle: "The pass key is 48213. Remember it. 48213 is the pass key."] [text …
     … the last ``tail`` tokens of the text: perplexity …] [question: "What is the pass key? The pass key is "] [48213]

One forward scores both: the perplexity of the last ``tail`` natural-text tokens before the question (the late
positions, which are what degrades beyond a model's window), and
the key, teacher-forced (every answer token must be the argmax: greedy decoding's answer). The needle goes at a
line break at a random depth of the text before the scored tail, so the scored text always comes after it. The
intro, needle, question and answer are those of :mod:`ropekit.eval.passkey` (Mohtashami & Jaggi 2023).

What the perplexity measures: exactly the plain ``ppl`` task's quantity (the loss of late tokens of a natural-text
window) for the same natural tokens, with about 40 more tokens of prompt and needle before them. The slow tests
check on SmolLM2 that it stays within 1% of the same tokens' perplexity in a plain window without the needle
(``tests/test_calibration.py``), and ``benchmarks/main_job.py`` prints both for every method and length.

Trial k uses the k-th of ``trials`` evenly spaced windows of the text, so ``trials`` samples are also ``trials``
perplexity windows. Each sample is its own forward at exactly ``length`` tokens, so RoPE whose frequencies depend on
the sequence length (dynamic NTK, LongRoPE) is scored exactly too.
"""

from __future__ import annotations

import math
import random

import torch
from tqdm.auto import tqdm

from ..errors import RopekitError
from ..extension import reset_rope_state
from ..corpus import text_tokens
from .passkey import ANSWER, INTRO, NEEDLE, QUESTION
from .perplexity import window_offsets
from .scoring import model_device
from .tasks import Column, Task, register


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _line_start(text: list[int], position: int, newline_ids: set[int]) -> int:
    """The nearest point at or before ``position`` that starts a line (the needle never splits a word)."""
    for i in range(position, max(0, position - 256), -1):
        if i == 0 or text[i - 1] in newline_ids:
            return i
    return position


def window_sample(tokenizer, tokens: list[int], length: int, offset: int, depth: float, key: str, tail: int) -> dict:
    """One sample of exactly ``length`` tokens from ``tokens[offset:]``; ``depth`` ∈ [0, 1) places the needle in the
    text before the scored tail. Returns the ids, where the scored tail and the answer sit in them, and ``text``: how
    many natural-text tokens (``tokens[offset:offset + text]``) the sample holds."""
    intro, needle = _encode(tokenizer, INTRO), _encode(tokenizer, NEEDLE.format(key=key).strip() + "\n")
    question, answer = _encode(tokenizer, QUESTION), _encode(tokenizer, ANSWER.format(key=key))
    natural = length - len(intro) - len(needle) - len(question) - len(answer)
    if natural < tail + 64:
        raise RopekitError(f"passkey_ppl length {length} is too short for a {tail}-token perplexity tail "
                           f"({length - natural + tail + 64} tokens minimum)", "use a longer length or a smaller passkey_ppl.tail")
    text = tokens[offset:offset + natural]
    newline_ids = {t for t in set(text) if "\n" in tokenizer.decode([t])}
    at = _line_start(text, int(depth * (natural - tail)), newline_ids)
    ids = intro + text[:at] + needle + text[at:] + question + answer
    tail_start = len(intro) + len(needle) + natural - tail  # index in ids of the first scored text token
    return {"ids": ids, "tail": (tail_start, tail_start + tail), "answer": len(answer), "needle_at": len(intro) + at,
            "depth": round((len(intro) + at) / length, 4), "key": key, "offset": offset, "text": natural}


@torch.no_grad()
def score_window(model, sample: dict) -> tuple[float, bool, float, list[int]]:
    """One forward: (sum of NLL over the tail, key retrieved, mean NLL of the key's tokens, predicted key tokens).
    Only the tail and answer rows go through the output layer."""
    device = model_device(model)
    ids = torch.tensor([sample["ids"]], device=device)
    reset_rope_state(model)
    hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state[0]
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)

    def logits(rows: slice) -> torch.Tensor:
        out = head(hidden[rows]).float()
        return torch.tanh(out / softcap) * softcap if softcap else out

    start, end = sample["tail"]
    tail_nll = torch.nn.functional.cross_entropy(logits(slice(start - 1, end - 1)), ids[0, start:end], reduction="sum").item()
    n = sample["answer"]
    predicting = logits(slice(len(sample["ids"]) - n - 1, len(sample["ids"]) - 1))
    gold = ids[0, -n:]
    predicted = predicting.argmax(-1)
    return tail_nll, bool((predicted == gold).all()), torch.nn.functional.cross_entropy(predicting, gold).item(), predicted.tolist()


def run_passkey_ppl(model, tokenizer, lengths, seed=0, progress=True, trials=1, tail=1024, source="paradise_lost") -> dict[int, dict]:
    lengths = [int(n) for n in lengths]
    trials, tail = int(trials), int(tail)
    if trials < 1 or tail < 1:
        raise RopekitError(f"passkey_ppl needs trials ≥ 1 and tail ≥ 1 (got trials={trials}, tail={tail})", "pass e.g. passkey_ppl.trials=3")
    tokens = text_tokens(tokenizer, source, min_tokens=max(lengths))
    out = {}
    bar = tqdm(total=len(lengths) * trials, desc="passkey_ppl", disable=not progress, leave=False)
    for length in lengths:
        rng = random.Random(f"passkey_ppl-{seed}-{length}")
        offsets = window_offsets(len(tokens), length, trials)
        rows, total_nll = [], 0.0
        for trial in range(trials):
            depth, key = rng.random(), str(rng.randint(10000, 99999))
            offset = offsets[trial % len(offsets)]
            sample = window_sample(tokenizer, tokens, length, offset, depth, key, tail)
            nll, correct, answer_nll, predicted = score_window(model, sample)
            total_nll += nll
            rows.append({"offset": offset, "depth": sample["depth"], "key": key, "correct": correct, "answer_nll": round(answer_nll, 4),
                         "predicted": tokenizer.decode(predicted), "tail_nll": round(nll / tail, 5)})
            bar.update(1)
        mean = total_nll / (tail * trials)
        out[length] = {"score": 100.0 * sum(r["correct"] for r in rows) / trials, "ppl": math.exp(mean), "nll": mean, "n": trials,
                       "tail": tail, "source": source, "trials": rows}
    bar.close()
    return out


register(Task("passkey_ppl", "a pass key planted early in a window of natural text, the perplexity of the text after it and the key "
              "asked at the end: both from one forward per sample", "accuracy %", True, run_passkey_ppl,
              {"trials": 1, "tail": 1024, "source": "paradise_lost"}, kind="natural",
              also=(Column("ppl", "ppl", "perplexity", False),), score_label="passkey"))
