"""Synthetic retrieval tasks generated here: LongChat-Lines and key–value retrieval (lost in the middle).

* ``lines`` — LongChat-Lines (Li et al. 2023, "How Long Can Open-Source LLMs Truly Promise on Context Length?",
  LMSYS blog; the set PoSE and CREAM evaluate on): a record of lines, each giving one line's REGISTER_CONTENT, and
  one line asked for. Records here read ``line {word}: <{value}> is its REGISTER_CONTENT`` (values 1000–50000).
* ``kv`` — key–value retrieval (Liu et al. 2023, "Lost in the Middle", arXiv 2307.03172): a JSON object of keys
  and values, one key asked for. Keys are words, values 6-digit numbers.

In both, the queried record sits at ``positions`` (fractions of the record list, default 0, ¼, ½, ¾, 1), so the
score is also reported per position (the lost-in-the-middle curve). Records fill the length: the density of records
per token is the same at every length.

**Format, calibrated on the default model** (docs/evaluation.md has the measurements). With the original formats —
LongChat's ``line righteous-ethernet-45: REGISTER_CONTENT is <42527>`` asked as "what is the <REGISTER_CONTENT> in
line …", Liu et al.'s UUID keys and values — SmolLM2-135M scores 0–30% *inside* its window, even with 14 records in
512 tokens, so such a task cannot show what an extension changes beyond the window. The model finds the right
record when (1) the prompt ends by starting the asked record in the record's own form, so the answer is its
continuation (``line harbour: <`` → ``23412``; ``"harbour": "`` → ``481516``), (2) the key is a single token
that only that record has, right before a one- or two-token separator and the value (a long generic separator such
as ``: REGISTER_CONTENT is <`` between key and value breaks it), and (3) the key is named only there (a question
that names the key earlier, then continues differently, pulls the answer toward the question). Values stay digit
strings and are scored exactly: every answer token must be the argmax (teacher-forced, equal to greedy decoding).
Keys are words of the Shakespeare corpus that the evaluated tokenizer keeps as one token in the task's context,
most frequent first after the 100 commonest; where a tokenizer has too few, longer words follow.

**Speed.** Every question about one record list shares that list: the list runs once into a KV cache and each
question + answer runs against it (:func:`ropekit.eval.scoring.score_after_prefix`, the same logits as separate
forwards), so a trial — one record list asked at every position — costs one long forward.

**Not the training data.** ``ropekit train``'s synthetic conversations (:mod:`ropekit.training.synthetic`) plant
``line 23: REGISTER_CONTENT is <4567>`` records (numeric line ids, 4-digit values, the old word order) and inline
JSON objects of six 8-character ``[a-z0-9]`` keys and values, asked in a chat turn, from ``Random("synthetic-{seed}")``;
evaluation items use word keys, these record forms and ``Random("{task}-{seed}-{length}-{trial}")``.
"""

from __future__ import annotations

import bisect
import random
import re
from collections import Counter

from tqdm.auto import tqdm

from ..corpus import natural_text
from ..errors import RopekitError
from .scoring import score_after_prefix
from .tasks import Task, evenly_spaced, register

LINES_INTRO = ("Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and contains a "
               "'<REGISTER_CONTENT>' as a numerical value. For each line index, memorize its corresponding <REGISTER_CONTENT>. "
               "At the end of the record, I will ask you to retrieve the corresponding <REGISTER_CONTENT> of a certain line "
               "index. Now the record start:\n\n")
LINES_RECORD = "line {key}: <{value}> is its REGISTER_CONTENT\n"
LINES_QUESTION = "\nNow the record is over. Complete the line I start with its <REGISTER_CONTENT>.\nline {key}: <"
KV_INTRO = "Extract the value corresponding to the specified key in the JSON object below.\n\nJSON data:\n"
KV_QUESTION = '\n\nThe value of this key, as in the JSON object:\n "{key}": "'
SKIP_COMMONEST = 100  # the commonest corpus words (that, with, your, ...) are not used as keys

_KEY_POOLS: dict[tuple, list[str]] = {}


def key_words(tokenizer, before: str) -> list[str]:
    """Candidate keys for this tokenizer: lowercase corpus words of 4–10 letters, those kept as one token after
    ``before`` (``" "`` in a line, ``'"'`` in JSON) first, each group by corpus frequency (ties alphabetical)."""
    cache = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), before)
    if cache not in _KEY_POOLS:
        counts = Counter(re.findall(r"(?<![A-Za-z'])[a-z]{4,10}(?![A-Za-z'])", natural_text("shakespeare")))
        words = sorted(counts, key=lambda w: (-counts[w], w))[SKIP_COMMONEST:]
        if not words:
            raise RopekitError(f"retrieval keys: the Shakespeare corpus has only {len(counts)} distinct words of 4-10 letters "
                               "(the tasks need more than a hundred)", "delete the corpus folder in ROPEKIT_CACHE so it is "
                               "fetched again")
        base = len(tokenizer(before, add_special_tokens=False).input_ids)
        sizes = [len(ids) - base for ids in tokenizer([before + w for w in words], add_special_tokens=False).input_ids]
        _KEY_POOLS[cache] = [w for _, _, w in sorted(zip(sizes, range(len(words)), words))]
    return _KEY_POOLS[cache]


def _fit(task: str, count_tokens, low: int, high: int, length: int, guess: int | None = None) -> int:
    """Largest record count n in [low, high] with count_tokens(n) ≤ length (count_tokens grows with n): a binary
    search, first bracketed around ``guess`` when one is given (fewer calls of an expensive count, same answer)."""
    if count_tokens(low) > length:
        raise RopekitError(f"{task}: length {length} is too short ({count_tokens(low)} tokens minimum)", "use a longer length")
    if guess is not None and low < guess < high:
        step = max(1, guess // 64)
        if count_tokens(guess) <= length:  # move the lower bound up to the guess, find an upper bound above it
            low, probe = guess, guess + step
            while probe < high and count_tokens(probe) <= length:
                low, probe, step = probe, probe + 2 * step, 2 * step
            high = min(high, probe)
        else:  # the guess overshoots: find a lower bound below it
            high, probe = guess - 1, guess - step
            while probe > low and count_tokens(probe) > length:
                high, probe, step = probe - 1, probe - 2 * step, 2 * step
            low = max(low, probe)
    while low < high:
        mid = (low + high + 1) // 2
        if count_tokens(mid) <= length:
            low = mid
        else:
            high = mid - 1
    return low


def _records_sample(task: str, tokenizer, length: int, positions: list[float], rng: random.Random, pool: list[str],
                    value, intro: str, record, question: str, outro: str = "") -> dict:
    """One record list filling ``length`` (with its longest question and answer) and one question per position.
    ``record(key, value, last)`` renders one record; ``value(rng)`` draws a value."""
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    intro_ids, outro_ids = encode(intro), encode(outro)
    smallest = len(encode(record(pool[0], value(random.Random(0)), False)))
    most = length // max(1, smallest - 1) + 2  # more records than can fit
    if most > len(pool):
        raise RopekitError(f"{task}: length {length} needs more distinct keys than the {len(pool)} this tokenizer offers",
                           f"use lengths up to about {len(pool) * (smallest - 1)} tokens for {task}")
    keys = rng.sample(pool[:most], k=most)
    values = [value(rng) for _ in keys]
    record_ids = tokenizer([record(k, v, False) for k, v in zip(keys, values)], add_special_tokens=False).input_ids
    sizes = [0]
    for ids in record_ids:
        sizes.append(sizes[-1] + len(ids))

    def ask(g: int, n: int) -> str:
        d = (g + n // 2) % n  # a worked example from the same list, far from the asked record (templates may use it)
        return question.format(key=keys[g], example_key=keys[d], example_value=values[d])

    def longest(n: int) -> int:
        return max(len(encode(ask(g, n))) + len(encode(values[g])) for g in {round(p * (n - 1)) for p in positions})

    fixed = len(intro_ids) + len(outro_ids) + longest(2)  # a first guess: the records that fit beside one question
    guess = bisect.bisect_right(sizes, length - fixed) - 1
    n = _fit(task, lambda k: len(intro_ids) + sizes[k] + len(outro_ids) + longest(k), 2, len(keys), length, guess)
    last = encode(record(keys[n - 1], values[n - 1], True))
    context = intro_ids + [t for ids in record_ids[:n - 1] for t in ids] + last + outro_ids
    questions = []
    for p in positions:
        g = round(p * (n - 1))
        questions.append({"position": p, "gold": keys[g], "value": values[g], "question": encode(ask(g, n)),
                          "answer": encode(values[g])})
    return {"context": context, "questions": questions, "records": n}


def lines_sample(tokenizer, length: int, positions: list[float], rng: random.Random) -> dict:
    return _records_sample("lines", tokenizer, length, positions, rng, key_words(tokenizer, " "),
                           lambda r: str(r.randint(1000, 50000)), LINES_INTRO,
                           lambda k, v, last: LINES_RECORD.format(key=k, value=v), LINES_QUESTION)


def kv_sample(tokenizer, length: int, positions: list[float], rng: random.Random) -> dict:
    # The JSON object as json.dumps(indent=1) writes it: one pair per line, commas between pairs.
    return _records_sample("kv", tokenizer, length, positions, rng, key_words(tokenizer, '"'),
                           lambda r: str(r.randint(100000, 999999)), KV_INTRO + "{",
                           lambda k, v, last: f'\n "{k}": "{v}"' + ("" if last else ","), KV_QUESTION, outro="\n}")


def _run_positions(name, make, model, tokenizer, lengths, seed, progress, positions, trials):
    positions = [float(p) for p in (positions or evenly_spaced(5))]
    out = {}
    bar = tqdm(total=len(lengths) * trials, desc=name, disable=not progress, leave=False)
    for length in lengths:
        rows = []
        for trial in range(trials):
            sample = make(tokenizer, length, positions, random.Random(f"{name}-{seed}-{length}-{trial}"))
            scored = score_after_prefix(model, sample["context"], [(q["question"], q["answer"]) for q in sample["questions"]])
            for q, r in zip(sample["questions"], scored):
                rows.append({"position": q["position"], "trial": trial, "records": sample["records"],
                             "tokens": len(sample["context"]) + len(q["question"]) + len(q["answer"]), "gold": q["gold"],
                             "value": q["value"], "correct": r.correct, "predicted": tokenizer.decode(r.predicted)})
            bar.update(1)
        by_position = {str(p): 100.0 * sum(r["correct"] for r in rows if r["position"] == p) / trials for p in positions}
        out[length] = {"score": 100.0 * sum(r["correct"] for r in rows) / len(rows), "n": len(rows), "positions": by_position,
                       "records": rows[0]["records"], "samples": rows}
    bar.close()
    return out


def run_lines(model, tokenizer, lengths, seed=0, progress=True, positions=None, trials=4):
    return _run_positions("lines", lines_sample, model, tokenizer, list(lengths), seed, progress, positions, int(trials))


def run_kv(model, tokenizer, lengths, seed=0, progress=True, positions=None, trials=4):
    return _run_positions("kv", kv_sample, model, tokenizer, list(lengths), seed, progress, positions, int(trials))


register(Task("lines", "LongChat-Lines: retrieve one line's REGISTER_CONTENT from a long record of lines (per query position)",
              "accuracy %", True, run_lines, {"positions": None, "trials": 4},
              version=2))  # 2: the calibrated record format (2026-11-27); 1: LongChat's original wording
register(Task("kv", "key-value retrieval from a JSON object, gold pair moved across positions (lost in the middle)",
              "accuracy %", True, run_kv, {"positions": None, "trials": 4},
              version=2))  # 2: word keys, 6-digit values, the prompt starting the asked record; 1: Liu et al.'s UUIDs
