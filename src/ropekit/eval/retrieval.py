"""Synthetic retrieval tasks generated here: LongChat-Lines and key–value retrieval (lost in the middle).

* ``lines`` — LongChat-Lines (Li et al. 2023, "How Long Can Open-Source LLMs Truly Promise on Context Length?",
  LMSYS blog; the set PoSE and CREAM evaluate on): records "line {name}: REGISTER_CONTENT is <{n}>", the model is
  asked for one line's number. The queried line sits at ``positions`` (fractions of the record list, default
  evenly spread), so the score is also reported per position.
* ``kv`` — key–value retrieval (Liu et al. 2023, "Lost in the Middle", arXiv 2307.03172; their kv_retrieval
  prompt): a JSON object of random UUID keys and values; the gold pair is moved across ``positions`` of the object,
  which shows the U-shaped lost-in-the-middle curve.

Both are scored by teacher forcing: the prompt ends with the answer's prefix and every answer token must be the
argmax (exact match, equal to greedy decoding). Prompts fill the length with as many records as fit (never more than
``length`` tokens); the actual token counts are reported.
"""

from __future__ import annotations

import json
import random
import uuid

from tqdm.auto import tqdm

from ..errors import RopekitError
from .scoring import score_answers
from .tasks import Task, evenly_spaced, register

ADJECTIVES = ["righteous", "silent", "brisk", "amber", "clever", "dusty", "eager", "fancy", "gentle", "hollow", "icy", "jolly",
              "kind", "lucky", "mellow", "noble", "odd", "proud", "quick", "rusty", "shy", "tidy", "urban", "vivid", "witty", "young"]
NOUNS = ["ethernet", "harbor", "lantern", "meadow", "orchard", "pebble", "quartz", "river", "saddle", "tunnel", "umbrella", "violin",
         "walnut", "yarn", "zephyr", "anchor", "beacon", "canyon", "dagger", "engine", "falcon", "garden", "hammer", "island"]
LINES_INTRO = ("Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and contains a "
               "'<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line index, memorize its corresponding "
               "<REGISTER_CONTENT>. At the end of the record, I will ask you to retrieve the corresponding <REGISTER_CONTENT> of a "
               "certain line index. Now the record start:\n\n")
LINES_QUESTION = "\nNow the record is over. Tell me what is the <REGISTER_CONTENT> in line {name}? I need the number.\nThe <REGISTER_CONTENT> in line {name} is <"
KV_INTRO = "Extract the value corresponding to the specified key in the JSON object below.\n\nJSON data:\n"
KV_QUESTION = '\n\nKey: "{key}"\nCorresponding value: "'


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


def lines_sample(tokenizer, length: int, position: float, rng: random.Random):
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    names, texts = [], []
    seen = set()
    while len(names) < length:  # more names than could ever fit
        name = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}-{rng.randint(10, 99)}"
        if name not in seen:
            seen.add(name)
            names.append(name)
            texts.append(f"line {name}: REGISTER_CONTENT is <{rng.randint(1000, 50000)}>\n")
        if len(names) > length // 4:
            break
    records = tokenizer(texts, add_special_tokens=False).input_ids  # one batched call, each record on its own
    intro = encode(LINES_INTRO)

    def build(n):
        gold = round(position * (n - 1))
        value = tokenizer.decode(records[gold]).split("<")[-1].split(">")[0]
        question = encode(LINES_QUESTION.format(name=names[gold]))
        context = intro + [t for r in records[:n] for t in r] + question
        return context, encode(value), names[gold], value

    n = _fit("lines", lambda k: sum(len(r) for r in records[:k]) + len(intro) + len(encode(LINES_QUESTION.format(name=names[0]))) + 8,
             2, len(records), length)
    context, answer, name, value = build(n)
    return {"context": context, "answer": answer, "records": n, "gold": name, "value": value}


def kv_sample(tokenizer, length: int, position: float, rng: random.Random):
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    pairs = [(str(uuid.UUID(int=rng.getrandbits(128), version=4)), str(uuid.UUID(int=rng.getrandbits(128), version=4)))
             for _ in range(max(4, length // 20))]

    def render(n):
        gold = round(position * (n - 1))
        data = json.dumps(dict(pairs[:n]), indent=1)
        key, value = pairs[gold]
        return encode(KV_INTRO + data + KV_QUESTION.format(key=key)), encode(value), key, value

    def count(k):
        return sum(len(part) for part in render(k)[:2])

    per_pair = (count(34) - count(2)) / 32 if len(pairs) > 34 else None  # tokens one more pair adds, for a first guess
    guess = int((length - count(2)) / per_pair) + 2 if per_pair else None
    n = _fit("kv", count, 2, len(pairs), length, guess)
    context, answer, key, value = render(n)
    return {"context": context, "answer": answer, "records": n, "gold": key, "value": value}


def _run_positions(name, make, model, tokenizer, lengths, seed, progress, positions, trials, batch_size):
    positions = positions or evenly_spaced(5)
    out = {}
    bar = tqdm(total=len(lengths) * len(positions) * trials, desc=name, disable=not progress, leave=False)
    for length in lengths:
        samples = []
        for position in positions:
            for trial in range(trials):
                rng = random.Random(f"{name}-{seed}-{length}-{position}-{trial}")
                samples.append((position, trial, make(tokenizer, length, position, rng)))
        scored = []
        for start in range(0, len(samples), max(1, batch_size)):
            chunk = samples[start:start + max(1, batch_size)]
            scored += score_answers(model, [(s["context"], s["answer"]) for _, _, s in chunk], batch_size=batch_size)
            bar.update(len(chunk))
        rows = [{"position": p, "trial": t, "records": s["records"], "tokens": len(s["context"]) + len(s["answer"]), "gold": s["gold"],
                 "value": s["value"], "correct": r.correct, "predicted": tokenizer.decode(r.predicted)}
                for (p, t, s), r in zip(samples, scored)]
        by_position = {str(p): 100.0 * sum(r["correct"] for r in rows if r["position"] == p) / trials for p in positions}
        out[length] = {"score": 100.0 * sum(r["correct"] for r in rows) / len(rows), "n": len(rows), "positions": by_position,
                       "records": rows[0]["records"], "samples": rows}
    bar.close()
    return out


def run_lines(model, tokenizer, lengths, seed=0, progress=True, positions=None, trials=4, batch_size=1):
    return _run_positions("lines", lines_sample, model, tokenizer, list(lengths), seed, progress, positions, trials, batch_size)


def run_kv(model, tokenizer, lengths, seed=0, progress=True, positions=None, trials=4, batch_size=1):
    return _run_positions("kv", kv_sample, model, tokenizer, list(lengths), seed, progress, positions, trials, batch_size)


register(Task("lines", "LongChat-Lines: retrieve one line's REGISTER_CONTENT from a long record list (per query position)",
              "accuracy %", True, run_lines, {"positions": None, "trials": 4, "batch_size": 1}))
register(Task("kv", "key-value retrieval from a JSON object of UUIDs, gold pair moved across positions (lost in the middle)",
              "accuracy %", True, run_kv, {"positions": None, "trials": 4, "batch_size": 1}))
