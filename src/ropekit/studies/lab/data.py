"""The lab's data: its character-level tokenizer and vocabulary, the natural texts, the value draws and the
sequence generators (pass key, key–value, binding with near-miss keys, plain text) that build both the training rows
(:class:`LabSequences`, mixed by :class:`Mix`) and the evaluation items of :mod:`ropekit.studies.lab.tasks`.

Training and evaluation never share values (even vs odd digit sums), fillers (Shakespeare vs *Paradise Lost*) or
seeds (``"lab-train-…"`` vs ``"lab-eval-…"``); the package docstring (:mod:`ropekit.studies.lab`) gives the templates.
The first room of the lab: it imports nothing from the others.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass

import torch

from ...errors import RopekitError
from ...eval.tasks import evenly_spaced


# ----------------------------------------------------------------------------------------------------------------------
# Vocabulary and tokenizer

SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<key>", "<query>", "<answer>")
KEY_SYMBOLS = tuple(f"<{chr(c)}>" for c in range(ord("A"), ord("Z") + 1))  # key–value keys: never in text
DIGITS = "0123456789"  # the only value tokens: never in a haystack
CHARACTERS = " \nabcdefghijklmnopqrstuvwxyz.,;:!?'-\"&()[]"
VOCABULARY = (*SPECIAL, *KEY_SYMBOLS, *DIGITS, *CHARACTERS)
PAD, BOS, EOS, UNK, KEY, QUERY, ANSWER = range(len(SPECIAL))
KEY_IDS = tuple(range(len(SPECIAL), len(SPECIAL) + len(KEY_SYMBOLS)))
DIGIT_IDS = tuple(range(KEY_IDS[-1] + 1, KEY_IDS[-1] + 1 + len(DIGITS)))


def lab_tokenizer():
    """The lab's character-level tokenizer as a ``PreTrainedTokenizerFast`` (saved with every lab checkpoint, so
    ``ropekit.load_model`` and ``AutoTokenizer`` load it). Text is NFKD-normalised, accents stripped and lower-cased;
    one token per character; characters outside :data:`CHARACTERS` and digits become ``<unk>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(VOCABULARY)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL + KEY_SYMBOLS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", clean_up_tokenization_spaces=False)
    return tokenizer


def check_lab_tokenizer(tokenizer, task: str) -> None:
    if tokenizer is None or tokenizer.convert_tokens_to_ids(["<key>", "<query>", "<answer>", "<A>", "0"]) != [KEY, QUERY, ANSWER, KEY_IDS[0], DIGIT_IDS[0]]:
        raise RopekitError(f"task {task} needs a model trained by `ropekit lab` (its tokenizer has the lab's marker and key tokens)",
                           "evaluate a lab checkpoint, or use the passkey/kv tasks for other models")


# ----------------------------------------------------------------------------------------------------------------------
# Text: training and evaluation never share a source


_TEXT_CACHE: dict[str, torch.Tensor] = {}
TEXT_SOURCES = {"train": "shakespeare", "eval": "paradise_lost"}


def lab_text(split: str) -> torch.Tensor:
    """Token ids (uint8) of the lab's natural text: ``train`` = Shakespeare, ``eval`` = *Paradise Lost*; digits
    removed, so values never occur in a haystack. Tokenised once and kept as raw bytes in the lab cache."""
    if split not in _TEXT_CACHE:
        from ...embedded import cache_dir

        stamp = hashlib.sha1(json.dumps([VOCABULARY, TEXT_SOURCES[split]]).encode()).hexdigest()[:12]
        path = cache_dir() / "lab" / f"text-{split}-{stamp}.u8"
        if not path.is_file():
            from ...eval.corpus import natural_text

            text = natural_text(TEXT_SOURCES[split]).translate({ord(d): None for d in DIGITS})
            tokenizer = lab_tokenizer()
            ids: list[int] = []
            for start in range(0, len(text), 1 << 20):  # tokenise in slices (the whole text is 5 MB)
                ids += tokenizer(text[start:start + (1 << 20)], add_special_tokens=False).input_ids
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(bytes(ids))
            tmp.replace(path)
        _TEXT_CACHE[split] = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    return _TEXT_CACHE[split]


# ----------------------------------------------------------------------------------------------------------------------
# Sequence generators (token level; every sequence is exactly `length` tokens)


def draw_value(rng: random.Random, digits: int, split: str) -> list[int]:
    """``digits`` distinct digit tokens whose digit sum is even (``train``) or odd (``eval``)."""
    parity = 0 if split == "train" else 1
    while True:
        values = rng.sample(range(10), digits)
        if sum(values) % 2 == parity:
            return [DIGIT_IDS[v] for v in values]


SENTENCE_END_IDS = frozenset(VOCABULARY.index(c) for c in ".!?\n")


def haystack(rng: random.Random, text: torch.Tensor, size: int) -> list[int]:
    """One random phrase of ``text`` repeated to ``size`` tokens: 8–24 characters ending at a sentence end (the
    shape of the usual "The grass is green." filler)."""
    while True:
        start = rng.randrange(len(text) - 32)
        window = text[start:start + 25].tolist()
        ends = [i for i in range(7, 24) if window[i] in SENTENCE_END_IDS]
        if ends:
            phrase = window[:ends[0] + 1] + ([VOCABULARY.index(" ")] if window[ends[0]] != VOCABULARY.index("\n") else [])
            return (phrase * (size // len(phrase) + 1))[:size]


def place(hay: list[int], inserts: list[tuple[float, list[int]]]) -> tuple[list[int], list[int]]:
    """Insert each token list at relative depth ∈ [0, 1] of ``hay``; returns the sequence and each insert's offset."""
    out, offsets, previous = [], [], 0
    for depth, tokens in inserts:
        cut = round(depth * len(hay))
        out += hay[previous:cut]
        offsets.append(len(out))
        out += tokens
        previous = cut
    return out + hay[previous:], offsets


def passkey_sequence(rng: random.Random, length: int, split: str, depth: float | None = None, digits: int | None = None) -> dict:
    """``<s> hay <key> key hay <query> <answer> key``: the pass key (1–5 distinct digits) at ``depth``."""
    key = draw_value(rng, digits or rng.randint(1, 5), split)
    depth = rng.random() if depth is None else depth
    query = [QUERY, ANSWER]
    room = length - 1 - (1 + len(key)) - len(query) - len(key)
    body, (offset,) = place(haystack(rng, lab_text(split), room), [(depth, [KEY, *key])])
    context = [BOS, *body, *query]
    return {"context": context, "answer": key, "depth": depth, "offset": offset + 1, "distance": len(context) - 2 - offset, "digits": len(key)}


def kv_sequence(rng: random.Random, length: int, split: str, pairs: int = 9, gold: int | None = None) -> dict:
    """``<s> hay <K1> v1 hay … <Kp> vp hay <query> <Kg> <answer> vg``: ``pairs`` key–value pairs at evenly spaced
    depths of the haystack (keys distinct symbols, values 1–4 distinct digits); pair ``gold`` is asked."""
    keys = rng.sample(KEY_IDS, pairs)
    values = [draw_value(rng, rng.randint(1, 4), split) for _ in range(pairs)]
    gold = rng.randrange(pairs) if gold is None else gold
    query = [QUERY, keys[gold], ANSWER]
    room = length - 1 - sum(1 + len(v) for v in values) - len(query) - len(values[gold])
    if room < 0:
        raise RopekitError(f"lab-kv: {pairs} pairs do not fit in {length} tokens", "use fewer pairs or a longer length")
    depths = evenly_spaced(pairs)
    body, offsets = place(haystack(rng, lab_text(split), room), [(d, [k, *v]) for d, k, v in zip(depths, keys, values)])
    context = [BOS, *body, *query]
    return {"context": context, "answer": values[gold], "depth": depths[gold], "gold": gold, "offset": offsets[gold] + 1,
            "distance": len(context) - 2 - offsets[gold]}


SPACE_IDS = frozenset(VOCABULARY.index(c) for c in " \n")
SPACE = VOCABULARY.index(" ")


def near_misses(rng: random.Random, key: tuple[int, ...], count: int, taken: set) -> list[tuple[int, ...]]:
    """``count`` keys one edit away from ``key``, none in ``taken`` (which gains them): one symbol replaced by one
    the key does not hold (the others shared in place), or, for keys of 2+ symbols, the same symbols reordered.
    The kinds take turns so that every position of the key and its order all matter to the answer."""
    kinds = [*range(len(key)), "order"] if len(key) > 1 else [0]
    out: list[tuple[int, ...]] = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        for _ in range(100):
            if kind == "order":
                candidate = key
                while candidate == key:  # the symbols are distinct, so another order exists
                    candidate = tuple(rng.sample(key, len(key)))
            else:
                replaced = list(key)
                replaced[kind] = rng.choice([s for s in KEY_IDS if s not in key])
                candidate = tuple(replaced)
            if candidate != key and candidate not in taken:
                break
            kind = rng.randrange(len(key))  # this order (2 symbols have one) is taken: replace a symbol instead
        taken.add(candidate)
        out.append(candidate)
    return out


def bind_sequence(rng: random.Random, length: int, split: str, pairs: int = 8, near: int = 4, symbols: int = 2,
                  gold: int | None = None, min_digits: int = 1, max_digits: int = 4, density: float = 0.05,
                  filler: str = "phrase") -> dict:
    """``<s> hay <K1a><K1b> v1 hay … <Kpa><Kpb> vp hay <query> <Kga><Kgb> <answer> vg``: ``pairs`` key–value pairs
    at evenly spaced depths whose keys are ``symbols`` key symbols each; ``near`` of them are near misses of the asked
    key (one symbol replaced, or the symbols reordered: :func:`near_misses`), the others share no symbol with it, so
    one pair and only one matches the question. Values (``min_digits``–``max_digits`` distinct digits) differ between
    pairs. The haystack (``filler``: ``phrase``, one phrase repeated as in :func:`haystack`, or ``text``, running
    text of the split) holds numbers of the split's parity at word starts, ``density`` × its tokens being digits:
    unlike pass key and key–value, a digit is no sign of a needle, so the model has to bind the asked key to its value.

    ``offset`` is the position of the gold key's first symbol, ``distance`` its distance to ``<answer>`` (as for
    key–value); ``keys``, ``values`` and ``kinds`` (``gold`` / ``near`` / ``other``) describe every slot."""
    if not 1 <= symbols <= len(KEY_SYMBOLS) // 2 or (near and symbols < 2) or not 0 <= near < pairs or not 0 <= (gold or 0) < pairs:
        raise RopekitError(f"lab-bind: {near} near misses of {symbols}-symbol keys among {pairs} pairs (gold slot {gold}) is not a task",
                           "use 2+ symbols per key, fewer near misses than pairs and a gold slot among them")
    if not 1 <= min_digits <= max_digits <= 10 or not 0 <= density < 1 or filler not in ("phrase", "text"):
        raise RopekitError(f"lab-bind: digits {min_digits}–{max_digits}, density {density}, filler {filler!r} are not valid",
                           "use 1 ≤ min_digits ≤ max_digits ≤ 10, 0 ≤ density < 1 and filler 'phrase' or 'text'")
    asked = tuple(rng.sample(KEY_IDS, symbols))
    taken = {asked}
    keys = [asked, *near_misses(rng, asked, near, taken)]
    apart = [s for s in KEY_IDS if s not in asked]  # the other keys share no symbol with the asked one
    while len(keys) < pairs:
        candidate = tuple(rng.sample(apart, symbols))
        if candidate not in taken:
            taken.add(candidate)
            keys.append(candidate)
    kinds = ["gold", *["near"] * near, *["other"] * (pairs - 1 - near)]
    values: list[list[int]] = []
    while len(values) < pairs:
        value = draw_value(rng, rng.randint(min_digits, max_digits), split)
        if value not in values:
            values.append(value)
    gold = rng.randrange(pairs) if gold is None else gold
    order = list(range(1, pairs))
    rng.shuffle(order)
    order.insert(gold, 0)  # slot → pair: the asked pair in slot `gold`, the distractors in random slots
    keys, values, kinds = [keys[i] for i in order], [values[i] for i in order], [kinds[i] for i in order]
    query = [QUERY, *asked, ANSWER]
    room = length - 1 - sum(symbols + len(v) for v in values) - len(query) - len(values[gold])
    digits = round(density * room)
    numbers: list[list[int]] = []  # haystack numbers: values' lengths and parity, so they look like values
    while sum(map(len, numbers)) < digits:
        numbers.append(draw_value(rng, min(rng.randint(min_digits, max_digits), digits - sum(map(len, numbers))), split))
    size = room - sum(len(n) + 1 for n in numbers)  # each number is followed by a space
    if size < 0:
        raise RopekitError(f"lab-bind: {pairs} pairs do not fit in {length} tokens", "use fewer pairs or a longer length")
    text = lab_text(split)
    if filler == "phrase":
        hay = haystack(rng, text, size)
    else:
        start = rng.randrange(len(text) - size)
        hay = text[start:start + size].tolist()
    depths = evenly_spaced(pairs)
    body, offsets = place(hay, [(d, [*k, *v]) for d, k, v in zip(depths, keys, values)])
    # a number goes where a word starts (after a space, or first): never inside a pair, never glued to a value
    starts = [i for i in range(len(body) + 1) if i == 0 or body[i - 1] in SPACE_IDS]
    cuts = sorted(rng.choice(starts) for _ in numbers)
    for cut, number in sorted(zip(cuts, numbers), key=lambda x: -x[0]):
        body[cut:cut] = [*number, SPACE]
    offsets = [o + sum(len(n) + 1 for c, n in zip(cuts, numbers) if c <= o) for o in offsets]
    context = [BOS, *body, *query]
    return {"context": context, "answer": values[gold], "depth": depths[gold], "gold": gold, "offset": offsets[gold] + 1,
            "distance": len(context) - 2 - offsets[gold], "pairs": pairs, "near": near, "hay_digits": digits,
            "keys": keys, "values": values, "kinds": kinds}


def text_sequence(rng: random.Random, length: int, split: str) -> dict:
    text = lab_text(split)
    start = rng.randrange(len(text) - length)
    return {"context": [BOS, *text[start:start + length - 1].tolist()], "answer": []}


@dataclass(frozen=True)
class Mix:
    """The training mixture: the share of rows that start with a pass-key, key–value or binding sequence (the rest are
    natural text), and how often that sequence fills the whole row. A shorter one (length uniform in [N/4, N]) is followed by
    natural text, so questions sit at every position of the window: a model that only ever saw its question at the
    last position learns where the question is from its distance to ``<s>``, and then any method that moves positions
    inside the window (YaRN, PI, Self-Extend at 1×) breaks it for a reason real models do not share."""

    passkey: float = 0.3  # pass key is learnt fast; key–value retrieval needs the larger share (measured, docs/lab.md)
    kv: float = 0.6
    full_length: float = 0.75
    kv_pairs: tuple[int, int] = (4, 12)  # pairs per key–value training sequence, uniform in this range
    # Binding rows (:func:`bind_sequence`), off by default so the committed pre-trainings stay what they were;
    # :data:`BIND_MIX` turns them on. The share comes after pass key and key–value, before the natural text.
    bind: float = 0.0
    bind_pairs: tuple[int, int] = (3, 10)  # pairs per binding training sequence, uniform in this range
    bind_near: float = 0.5  # share of the distractor pairs that are near misses of the asked key
    bind_symbols: int = 2  # key symbols per key
    bind_digits: tuple[int, int] = (1, 4)  # digits per value (and per haystack number)
    bind_density: float = 0.05  # share of the haystack's tokens that are digits

    def identity(self) -> dict:
        """The mixture as the pre-training cache key sees it: without the binding fields while ``bind`` is 0, so
        models cached before binding rows existed keep their key (those fields change no row then)."""
        out = asdict(self)
        if not self.bind:
            out = {k: v for k, v in out.items() if not k.startswith("bind")}
        return out


# The mixture with binding rows: pass key stays learnt (it was at 100% with 0.3), key–value keeps the share it
# needed at this scale, binding (the harder task) gets the most; natural text keeps its 10%.
BIND_MIX = Mix(passkey=0.2, kv=0.3, bind=0.4)


class LabSequences:
    """A list-like, lazily generated training set: row ``i`` of (seed, length) is always the same sequence.

    Handed to :class:`ropekit.training.trainer.TrainingSet` as its rows (which only indexes and measures them), so millions
    of rows never sit in memory. Rows are :class:`ropekit.training.data.Example` with ``labels = input_ids``; the loss
    (:func:`answer_weighted_loss`) tells answers (from ``<answer>`` to the next ``<s>``) from the rest.
    """

    def __init__(self, count: int, length: int, seed: int, mix: Mix = Mix()):
        self.count, self.length, self.seed, self.mix = count, length, seed, mix

    def __len__(self) -> int:
        return self.count

    def sequence(self, index: int) -> list[int]:
        rng = random.Random(f"lab-train-{self.seed}-{self.length}-{index}")
        n = self.length
        draw = rng.random()
        if draw >= self.mix.passkey + self.mix.kv + self.mix.bind:
            return text_sequence(rng, n, "train")["context"]
        size = n if rng.random() < self.mix.full_length else rng.randint(n // 4, n)
        if n - size < 16:  # too little room for a text piece: fill the row
            size = n
        if draw < self.mix.passkey:
            s = passkey_sequence(rng, size, "train")
        elif draw < self.mix.passkey + self.mix.kv:
            low, high = self.mix.kv_pairs
            pairs = rng.randint(low, high)
            while pairs > 1 and pairs * 5 + 8 > size // 2:  # keep at least half the sequence haystack
                pairs -= 1
            s = kv_sequence(rng, size, "train", pairs=pairs)
        else:
            s = self.bind_row(rng, size)
        ids = s["context"] + s["answer"]
        return ids + (text_sequence(rng, n - size, "train")["context"] if size < n else [])

    def bind_row(self, rng: random.Random, size: int) -> dict:
        m = self.mix
        pairs = rng.randint(*m.bind_pairs)
        widest = m.bind_symbols + m.bind_digits[1]
        while pairs > 1 and (pairs + 1) * widest + 4 > size // 2:  # keep at least half the sequence haystack
            pairs -= 1
        return bind_sequence(rng, size, "train", pairs=pairs, near=round(m.bind_near * (pairs - 1)), symbols=m.bind_symbols,
                             min_digits=m.bind_digits[0], max_digits=m.bind_digits[1], density=m.bind_density)

    def __getitem__(self, index: int):
        from ...training.data import Example

        if not 0 <= index < self.count:
            raise IndexError(index)
        ids = self.sequence(index)
        return Example(ids, list(ids))
