"""RULER synthetic tasks (Hsieh et al. 2024, "RULER: What's the Real Context Size of Your Long-Context Language
Models?", arXiv 2404.06654), generated here, deterministic under the seed, at exact token lengths.

Prompts, answer prefixes and task parameters follow NVIDIA/RULER ``scripts/data/synthetic/constants.py`` (templates,
answer prefixes, tokens to generate), ``scripts/data/synthetic/niah.py`` (needle sentence, singular rewording, query
joining, needle shuffling), ``scripts/data/synthetic/variable_tracking.py`` (5-letter names, 5-digit value, one chain
of 4 hops in repeated noise, one-shot example) and ``scripts/data/synthetic/common_words_extraction.py`` (numbered
list, 10 common words, frequencies 30/3 or 6/1 below 4096 tokens, one-shot example), with the ``niah_multikey_1``,
``niah_multivalue``, ``niah_multiquery``, ``vt`` and ``cwe`` settings of ``scripts/synthetic.yaml``. The metric is
``string_match_all`` of ``scripts/eval/synthetic/constants.py``: the fraction of references found in the prediction
(case-insensitive substring) × 100.

Subtasks:

- ``niah_multikey``: 4 needles "One of the special magic numbers for {key} is: {value}." with distinct keys; one key
  is asked. Teacher-forced: the prompt ends with the answer prefix and a space, and the 7 digits must all be the
  argmax (equal to greedy decoding right after the prefix). Score 100 or 0 per sample.
- ``niah_multivalue``: one key planted with 4 values; all 4 are asked. Greedy generation, ``string_match_all``.
- ``niah_multiquery``: 4 keys, all asked at once ("a, b, c, and d"). Greedy generation, ``string_match_all``.
- ``vt``: variable tracking, "VAR ABCDE = 12345", "VAR FGHIJ = VAR ABCDE", ... (5 names) hidden in repeated noise;
  "Find all variables that are assigned the value 12345". Greedy generation, ``string_match_all``.
- ``cwe``: common words extraction from a numbered word list where 10 words appear many times and the rest few.
  Greedy generation, ``string_match_all``.

Differences from RULER, and why:

- Haystack: RULER's "essay" haystack is Paul Graham essays (downloaded, not available offline). Here natural text
  comes from :func:`ropekit.corpus.text_tokens` (``"shakespeare"`` by default, or any text file);
  ``haystack="noise"`` is RULER's "repeat" haystack ("The grass is green. The sky is blue. ..."). ``vt`` always uses
  the noise, as in RULER.
- Words: RULER draws keys ("adjective-noun") and list words from wonderwords' lists; here they are pronounceable
  consonant-vowel pseudo-words from the seeded RNG (no download). List words all have 6 letters, so no word is a
  substring of another and substring matching cannot give credit by accident.
- Exact lengths: samples are built at the token level (pieces tokenised separately, haystack trimmed to the exact
  count) instead of RULER's growing-and-retokenising the text. A teacher-forced sample is ``length`` tokens
  (context + answer); a generated one has a context of ``length - max_new_tokens`` tokens, so the answer fits
  within ``length`` (RULER's convention: the length includes the tokens to generate).
- Depths: needle i of n goes at a uniform random depth in the i-th of n equal strata (spread evenly, seeded; RULER
  samples from 40 evenly spaced depths), moved to the nearest sentence end nearby (natural text) or line boundary
  (noise). ``cwe`` has no haystack: its list is filled to the exact count by a last, truncated run of one-off words.
- One-shot examples (vt, cwe) are drawn per sample; vt's uses 4 noise lines (RULER fits it into 500 tokens).
"""

from __future__ import annotations

import random
import re
import string
from bisect import bisect_left
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from ..errors import RopekitError
from ..corpus import text_tokens
from .scoring import generate_greedy, score_answers
from .tasks import Task, register

# Templates and answer prefixes of RULER's scripts/data/synthetic/constants.py (the "base" model template: the answer
# prefix is appended to the prompt).
NIAH_TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
                 "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?")
NIAH_ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic numbers for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
VT_ANSWER_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
                    "assgined the value {query}, they are: ")  # "assgined" sic, as in RULER
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. "
                "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?")
CWE_ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"

SUBTASKS = ("niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe")
NIAH = {"niah_multikey": (4, 1, 1), "niah_multivalue": (1, 4, 1), "niah_multiquery": (4, 1, 4)}  # keys, values per key, keys asked
TEACHER_FORCED = {"niah_multikey"}
TOKENS_TO_GENERATE = {"niah_multivalue": 128, "niah_multiquery": 128, "vt": 30, "cwe": 120}  # RULER's tokens_to_generate
VT_HOPS, VT_EXAMPLE_NOISE = 4, 4
CWE_COMMON = 10

CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
WORD_SPACE = (len(CONSONANTS) * len(VOWELS)) ** 3  # 6-letter CVCVCV pseudo-words


@dataclass
class RulerSample:
    subtask: str
    length: int
    context: list[int]
    references: list[str]
    answer: list[int] = field(default_factory=list)  # teacher-forced answer tokens; empty for generated subtasks
    max_new_tokens: int = 0  # generated subtasks: len(context) + max_new_tokens == length
    depths: list[float] = field(default_factory=list)  # relative depth of each asked needle / chain link


# --- metric ---------------------------------------------------------------------------------------------------------

def _postprocess(prediction: str) -> str:
    """RULER's ``postprocess_pred``: control characters become newlines, then strip."""
    return re.sub(r"[\x00-\x1f]", "\n", prediction).strip()


def string_match_all(prediction: str, references: list[str]) -> float:
    """Percentage of ``references`` found in ``prediction`` (case-insensitive substring), as RULER scores one sample."""
    prediction = _postprocess(prediction).lower()
    return 100.0 * sum(r.lower() in prediction for r in references) / len(references)


# --- building blocks ------------------------------------------------------------------------------------------------

def pseudo_word(index: int) -> str:
    """The ``index``-th 6-letter consonant-vowel word (0 <= index < WORD_SPACE)."""
    letters = []
    for _ in range(3):
        index, v = divmod(index, len(VOWELS))
        index, c = divmod(index, len(CONSONANTS))
        letters.append(CONSONANTS[c] + VOWELS[v])
    return "".join(letters)


class _Words:
    """Distinct pseudo-words drawn from a seeded RNG."""

    def __init__(self, rng: random.Random):
        self.rng, self.seen = rng, set()

    def take(self, count: int) -> list[str]:
        if len(self.seen) + count > WORD_SPACE // 2:
            raise RopekitError("the RULER sample needs more distinct words than the generator has", "use a shorter length")
        words = []
        while len(words) < count:
            index = self.rng.randrange(WORD_SPACE)
            if index not in self.seen:
                self.seen.add(index)
                words.append(pseudo_word(index))
        return words


def _join_queries(keys: list[str]) -> str:
    return ", ".join(keys[:-1]) + ", and " + keys[-1] if len(keys) > 1 else keys[0]


def _singular(template: str) -> str:
    """RULER's rewording when one value is asked (applied before the query is filled in)."""
    return template.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


def _too_short(subtask: str, length: int, minimum: int) -> RopekitError:
    return RopekitError(f"RULER length {length} is too short for {subtask} (about {minimum} tokens minimum)",
                        f"use lengths of at least {minimum} or leave {subtask} out of ruler.subtasks")


def _assemble(haystack: list[int], inserts: list[tuple[int, list[int]]]) -> list[int]:
    """``haystack`` with each piece inserted at its position (positions sorted ascending)."""
    out, last = [], 0
    for position, piece in inserts:
        out += haystack[last:position]
        out += piece
        last = position
    return out + haystack[last:]


class _Builder:
    """Tokenisation and haystacks for one tokenizer and haystack source."""

    SNAP = 256  # how far the haystack start may move to begin after a sentence end

    def __init__(self, tokenizer, haystack: str = "shakespeare"):
        self.tokenizer, self.haystack = tokenizer, haystack
        self._ends: dict[int, bool] = {}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False).input_ids if texts else []

    def sentence_end(self, token: int) -> bool:
        if token not in self._ends:
            self._ends[token] = self.tokenizer.decode([token]).rstrip().endswith((".", "!", "?"))
        return self._ends[token]

    def noise(self, room: int) -> tuple[list[int], list[int]]:
        """``room`` tokens of repeated noise lines and the line boundaries (where pieces may go)."""
        unit = self.encode(NOISE + "\n")
        units, rest = divmod(room, len(unit))
        return unit * units + unit[:rest], [i * len(unit) for i in range(units + 1)]

    def haystack_tokens(self, room: int, rng: random.Random) -> tuple[list[int], list[int]]:
        """``room`` haystack tokens and the positions a needle may go (sentence ends or noise line boundaries)."""
        if self.haystack == "noise":
            return self.noise(room)
        ids = text_tokens(self.tokenizer, self.haystack, min_tokens=room + self.SNAP)
        start = rng.randrange(len(ids) - room - self.SNAP + 1)
        for i in range(start, start + self.SNAP):
            if self.sentence_end(ids[i]):
                start = i + 1
                break
        window = ids[start:start + room]
        return window, [0] + [i + 1 for i, token in enumerate(window) if self.sentence_end(token)] + [room]

    def positions(self, rng: random.Random, count: int, room: int, allowed: list[int], snap_any: bool) -> list[int]:
        """``count`` insertion points spread evenly (one uniform depth per stratum), moved to the nearest allowed one."""
        radius = room if snap_any else min(256, room // (4 * count))
        points = []
        for i in range(count):
            target = round((i + rng.random()) / count * room)
            j = bisect_left(allowed, target)
            nearest = min(allowed[max(0, j - 1):j + 1], key=lambda p: abs(p - target))
            points.append(nearest if abs(nearest - target) <= radius else target)
        return sorted(points)


# --- generators -----------------------------------------------------------------------------------------------------

def make_niah(builder: _Builder, subtask: str, length: int, rng: random.Random, max_new_tokens: int) -> RulerSample:
    num_keys, num_values, num_queries = NIAH[subtask]
    words = _Words(rng)
    keys = [f"{a}-{b}" for a, b in zip(*[iter(words.take(2 * num_keys))] * 2)]
    numbers = [str(v) for v in rng.sample(range(1_000_000, 10_000_000), num_keys * num_values)]
    values = [numbers[k * num_values:(k + 1) * num_values] for k in range(num_keys)]
    needles = [(k, value) for k in range(num_keys) for value in values[k]]
    rng.shuffle(needles)
    asked = rng.sample(range(num_keys), num_queries)
    references = [value for k in asked for value in values[k]]

    teacher_forced = subtask in TEACHER_FORCED
    head, tail = (NIAH_TEMPLATE + NIAH_ANSWER_PREFIX).split("{context}")
    singular = num_queries * num_values == 1
    if singular:
        head, tail = _singular(head), _singular(tail)
    type_v = "number" if singular else "numbers"
    head_ids = builder.encode(head.format(type_needle_v=type_v))
    tail_ids = builder.encode(tail.format(type_needle_v=type_v, query=_join_queries([keys[k] for k in asked]))
                              + (" " if teacher_forced else ""))
    wrap = "{}\n" if builder.haystack == "noise" else " {}"
    pieces = [builder.encode(wrap.format(NEEDLE.format(key=keys[k], value=value))) for k, value in needles]
    answer = builder.encode(references[0]) if teacher_forced else []
    reserved = len(answer) if teacher_forced else max_new_tokens
    room = length - len(head_ids) - len(tail_ids) - sum(map(len, pieces)) - reserved
    if room < 0:
        raise _too_short(subtask, length, length - room)
    haystack, allowed = builder.haystack_tokens(room, rng)
    points = builder.positions(rng, len(pieces), room, allowed, snap_any=builder.haystack == "noise")
    context = head_ids + _assemble(haystack, list(zip(points, pieces))) + tail_ids
    depths = [round(p / max(room, 1), 4) for p, (k, _) in zip(points, needles) if k in asked]
    return RulerSample(subtask, length, context, references, answer, 0 if teacher_forced else max_new_tokens, depths)


def _vt_chain(rng: random.Random, letters: int, exclude: set[str]) -> tuple[list[str], str, list[str]]:
    names: list[str] = []
    while len(names) < VT_HOPS + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names and name not in exclude:
            names.append(name)
    value = str(rng.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(VT_HOPS)]
    return names, value, chain


def _vt_example(rng: random.Random, exclude_value: str) -> str:
    """RULER's one-shot example: a short chain of 3-letter names in a few noise lines, with its answer."""
    while True:
        names, value, chain = _vt_chain(rng, 3, set())
        if value != exclude_value:
            break
    lines = [NOISE] * VT_EXAMPLE_NOISE
    for offset, position in enumerate(sorted(rng.randrange(VT_EXAMPLE_NOISE + 1) for _ in chain)):
        lines.insert(position + offset, chain[offset])  # links keep their order
    return (VT_TEMPLATE.format(context="\n".join(lines), query=value)
            + VT_ANSWER_PREFIX.format(num_v=len(names), query=value) + " ".join(names) + "\n\n")


def make_vt(builder: _Builder, length: int, rng: random.Random, max_new_tokens: int) -> RulerSample:
    names, value, chain = _vt_chain(rng, 5, set())
    example = _vt_example(rng, value)
    head, tail = (VT_TEMPLATE + VT_ANSWER_PREFIX).split("{context}")
    head_ids = builder.encode(example + head)
    tail_ids = builder.encode(tail.format(query=value, num_v=len(names)))
    pieces = [builder.encode(link + "\n") for link in chain]
    room = length - len(head_ids) - len(tail_ids) - sum(map(len, pieces)) - max_new_tokens
    if room < 0:
        raise _too_short("vt", length, length - room)
    noise, boundaries = builder.noise(room)
    points = builder.positions(rng, len(pieces), room, boundaries, snap_any=True)
    context = head_ids + _assemble(noise, list(zip(points, pieces))) + tail_ids
    return RulerSample("vt", length, context, names, [], max_new_tokens, [round(p / max(room, 1), 4) for p in points])


def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {word}" for i, word in enumerate(words))


class _Costs:
    """Token ids of list pieces, tokenised in batches as needed: ``number(i)`` is "i." (" i." after the first)."""

    CHUNK = 512

    def __init__(self, builder: _Builder, words: _Words):
        self.builder, self.words = builder, words
        self.numbers: list[list[int]] = []
        self.pool: list[str] = []
        self.pool_ids: list[list[int]] = []

    def number(self, i: int) -> list[int]:
        while len(self.numbers) < i:
            start = len(self.numbers) + 1
            self.numbers += self.builder.encode_many([f"{j}." if j == 1 else f" {j}." for j in range(start, start + self.CHUNK)])
        return self.numbers[i - 1]

    def word(self, k: int) -> tuple[str, list[int]]:
        while len(self.pool) <= k:
            fresh = self.words.take(self.CHUNK)
            self.pool += fresh
            self.pool_ids += self.builder.encode_many([f" {w}" for w in fresh])
        return self.pool[k], self.pool_ids[k]


def make_cwe(builder: _Builder, length: int, rng: random.Random, max_new_tokens: int) -> RulerSample:
    words = _Words(rng)
    short = length < 4096  # RULER's settings below 4096 tokens
    example_n, example_cw, example_ucw = (20, 3, 1) if short else (40, 10, 3)
    freq_cw, freq_ucw = (6, 1) if short else (30, 3)

    example_words = words.take(example_n)
    example_list = example_words[:CWE_COMMON] * example_cw + example_words[CWE_COMMON:] * example_ucw
    rng.shuffle(example_list)
    example = (CWE_TEMPLATE.format(context=_numbered(example_list)) + CWE_ANSWER_PREFIX + " "
               + _numbered(example_words[:CWE_COMMON]) + "\n")
    head, tail = (CWE_TEMPLATE + CWE_ANSWER_PREFIX).split("{context}")
    head_ids, tail_ids = builder.encode(example + head), builder.encode(tail)
    budget = length - len(head_ids) - len(tail_ids) - max_new_tokens

    costs = _Costs(builder, words)
    entries = CWE_COMMON * freq_cw
    used = sum(freq_cw * len(costs.word(k)[1]) for k in range(CWE_COMMON)) + sum(len(costs.number(i)) for i in range(1, entries + 1))
    if used > budget:
        raise _too_short("cwe", length, length - budget + used)
    count = CWE_COMMON  # words taken from the pool: the common ones, then uncommon ones while they fit
    while True:
        extra = freq_ucw * len(costs.word(count)[1]) + sum(len(costs.number(entries + j)) for j in range(1, freq_ucw + 1))
        if used + extra > budget:
            break
        used, entries, count = used + extra, entries + freq_ucw, count + 1

    common = [costs.word(k) for k in range(CWE_COMMON)]
    listed = common * freq_cw + [costs.word(k) for k in range(CWE_COMMON, count)] * freq_ucw
    rng.shuffle(listed)
    ids: list[int] = []
    for i, (_, word_ids) in enumerate(listed, start=1):
        ids += costs.number(i) + word_ids
    k, i = count, len(listed) + 1  # fill the last few tokens with one-off words, the last one cut
    while len(ids) < budget:
        ids += costs.number(i) + costs.word(k)[1]
        k, i = k + 1, i + 1
    context = head_ids + ids[:budget] + tail_ids
    return RulerSample("cwe", length, context, [word for word, _ in common], [], max_new_tokens, [])


def make_sample(builder: _Builder, subtask: str, length: int, rng: random.Random, max_new_tokens: int | None = None) -> RulerSample:
    new = max_new_tokens or TOKENS_TO_GENERATE.get(subtask, 0)
    if subtask in NIAH:
        return make_niah(builder, subtask, length, rng, new)
    if subtask == "vt":
        return make_vt(builder, length, rng, new)
    if subtask == "cwe":
        return make_cwe(builder, length, rng, new)
    raise RopekitError(f"unknown RULER subtask {subtask!r}", f"use some of: {', '.join(SUBTASKS)}")


def ruler_samples(tokenizer, subtask: str, length: int, count: int, seed: int = 0, haystack: str = "shakespeare",
                  max_new_tokens: int | None = None, builder: _Builder | None = None) -> list[RulerSample]:
    """``count`` samples of one subtask at ``length``, deterministic under ``seed``."""
    builder = builder or _Builder(tokenizer, haystack)
    rng = random.Random(f"ruler-{subtask}-{seed}-{length}")
    return [make_sample(builder, subtask, length, rng, max_new_tokens) for _ in range(count)]


# --- evaluation -----------------------------------------------------------------------------------------------------

def evaluate_samples(model, tokenizer, samples: list[RulerSample], batch_size: int = 1) -> list[dict]:
    """One row per sample: teacher-forced (score 100/0) or greedy generation scored by ``string_match_all``."""
    rows: list[dict | None] = [None] * len(samples)
    forced = [i for i, s in enumerate(samples) if s.answer]
    if forced:
        scored = score_answers(model, [(samples[i].context, samples[i].answer) for i in forced], batch_size=batch_size)
        for i, result in zip(forced, scored):
            s = samples[i]
            rows[i] = {"subtask": s.subtask, "score": 100.0 * result.correct, "predicted": tokenizer.decode(result.predicted),
                       "references": s.references, "answer_nll": round(result.answer_nll, 4), "depths": s.depths}
    by_budget: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        if not s.answer:
            by_budget.setdefault(s.max_new_tokens, []).append(i)
    for budget, indices in by_budget.items():
        predictions = generate_greedy(model, tokenizer, [samples[i].context for i in indices], budget, batch_size=batch_size)
        for i, prediction in zip(indices, predictions):
            s = samples[i]
            rows[i] = {"subtask": s.subtask, "score": string_match_all(prediction, s.references), "prediction": prediction,
                       "references": s.references, "depths": s.depths}
    return rows  # type: ignore[return-value]


def _subtask_names(subtasks) -> list[str]:
    names = [n.strip() for n in subtasks.split(",")] if isinstance(subtasks, str) else [str(n) for n in subtasks]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in SUBTASKS]
    if unknown or not names:
        raise RopekitError(f"unknown RULER subtask {unknown[0] if unknown else ''!r}", f"use some of: {', '.join(SUBTASKS)}")
    return list(dict.fromkeys(names))


def _run(model, tokenizer, lengths, seed=0, progress=True, subtasks=SUBTASKS, samples=10, haystack="shakespeare",
         batch_size=1, max_new_tokens=None):
    names = _subtask_names(subtasks)
    if int(samples) < 1:
        raise RopekitError(f"ruler.samples={samples} must be at least 1", "pass e.g. ruler.samples=10")
    if max_new_tokens is not None and int(max_new_tokens) < 1:
        raise RopekitError(f"ruler.max_new_tokens={max_new_tokens} must be at least 1", "leave it unset for RULER's defaults")
    builder = _Builder(tokenizer, str(haystack))
    lengths = [int(length) for length in lengths]
    # Build everything first: a too-short length fails before any model time is spent.
    data = {L: {name: ruler_samples(tokenizer, name, L, int(samples), seed, str(haystack), max_new_tokens, builder) for name in names}
            for L in lengths}
    out = {}
    with tqdm(total=len(lengths) * len(names), desc="ruler", disable=not progress, leave=False) as bar:
        for L in lengths:
            rows, per_task = [], {}
            for name in names:
                bar.set_postfix_str(f"{L} {name}")
                task_rows = evaluate_samples(model, tokenizer, data[L][name], batch_size)
                per_task[name] = {"score": sum(r["score"] for r in task_rows) / len(task_rows), "n": len(task_rows)}
                rows += task_rows
                bar.update()
            out[L] = {"score": sum(t["score"] for t in per_task.values()) / len(per_task), "n": len(rows),
                      "subtasks": per_task, "samples": rows}
    return out


register(Task("ruler", "RULER synthetic tasks: multi-key/value/query NIAH, variable tracking, common words (Hsieh et al. 2024)",
              "score % (RULER string match)", True, _run,
              {"subtasks": list(SUBTASKS), "samples": 10, "haystack": "shakespeare", "batch_size": 1, "max_new_tokens": None}))
