"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention", §4.2; prompt as in their repository).

A 5-digit key sits at a given depth inside repeated filler sentences; the model must complete "The pass key is" with
it. Success = every answer token is the argmax (teacher-forced, equal to greedy decoding). Each sample is built at
the token level to exactly ``length`` tokens (prompt + answer), so lengths are exact and rows batch without padding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tqdm.auto import tqdm

from .scoring import score_answers
from .tasks import Task, register

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\n\nWhat is the pass key? The pass key is "
ANSWER = "{key}"  # the space stays in the prompt, so only the digits are scored (a model answering " a 12345" is not wrong)


@dataclass
class PasskeySample:
    length: int
    depth: float
    key: str
    context: list[int]
    answer: list[int]


def make_passkey_sample(tokenizer, length: int, depth: float, key: str) -> PasskeySample:
    """A prompt of exactly ``length`` tokens (context + answer) with the key at relative ``depth`` ∈ [0, 1]."""
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    intro, filler, needle = encode(INTRO), encode(FILLER), encode(NEEDLE.format(key=key))
    question, answer = encode(QUESTION), encode(ANSWER.format(key=key))
    room = length - len(intro) - len(needle) - len(question) - len(answer)
    if room < 0:
        raise ValueError(f"passkey length {length} is too short for the prompt ({length - room} tokens minimum)")
    units, rest = divmod(room, len(filler))
    before = round(depth * units)
    haystack = filler * before + needle + filler * (units - before) + filler[:rest]
    return PasskeySample(length, depth, key, intro + haystack + question, answer)


def passkey_samples(tokenizer, length: int, trials: int, seed: int = 0, depths: list[float] | None = None) -> list[PasskeySample]:
    """``trials`` samples at ``length``: random depths (or the given ones, cycled) and random 5-digit keys."""
    rng = random.Random(f"passkey-{seed}-{length}")
    samples = []
    for trial in range(trials):
        depth = depths[trial % len(depths)] if depths else rng.random()
        key = str(rng.randint(10000, 99999))
        samples.append(make_passkey_sample(tokenizer, length, depth, key))
    return samples


def run_passkey(model, tokenizer, lengths: list[int], trials: int = 20, seed: int = 0, depths: list[float] | None = None,
                batch_size: int = 1, progress: bool = True) -> dict:
    """Passkey accuracy per length: ``{"lengths": {L: {"accuracy": %, "trials": [...]}}}``."""
    out = {"task": "passkey", "trials": trials, "seed": seed, "lengths": {}}
    for length in tqdm(lengths, desc="passkey", disable=not progress, leave=False):
        samples = passkey_samples(tokenizer, length, trials, seed, depths)
        scored = score_answers(model, [(s.context, s.answer) for s in samples], batch_size=batch_size)
        rows = [{"depth": round(s.depth, 4), "key": s.key, "correct": r.correct, "answer_nll": round(r.answer_nll, 4),
                 "predicted": tokenizer.decode(r.predicted)} for s, r in zip(samples, scored)]
        out["lengths"][str(length)] = {"accuracy": 100.0 * sum(r["correct"] for r in rows) / len(rows), "trials": rows}
    return out


def _run(model, tokenizer, lengths, seed=0, progress=True, trials=20, depths=None, batch_size=1):
    result = run_passkey(model, tokenizer, list(lengths), trials=trials, seed=seed, depths=depths, batch_size=batch_size, progress=progress)
    return {int(length): {"score": r["accuracy"], "n": len(r["trials"]), "trials": r["trials"]} for length, r in result["lengths"].items()}


register(Task("passkey", "5-digit pass key at random depths in repeated filler (Mohtashami & Jaggi 2023)", "accuracy %", True, _run,
              {"trials": 20, "depths": None, "batch_size": 1}))
