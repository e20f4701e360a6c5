"""The lab's data: its character-level tokenizer and vocabulary, the natural texts, the value draws and the
sequence generators (pass key, key–value, plain text) that build both the training rows (:class:`LabSequences`, mixed
by :class:`Mix`) and the evaluation items of :mod:`ropekit.studies.lab.tasks`.

Training and evaluation never share values (even vs odd digit sums), fillers (Shakespeare vs *Paradise Lost*) or
seeds (``"lab-train-…"`` vs ``"lab-eval-…"``); the package docstring (:mod:`ropekit.studies.lab`) gives the templates.
The first room of the lab: it imports nothing from the others.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

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


def text_sequence(rng: random.Random, length: int, split: str) -> dict:
    text = lab_text(split)
    start = rng.randrange(len(text) - length)
    return {"context": [BOS, *text[start:start + length - 1].tolist()], "answer": []}


@dataclass(frozen=True)
class Mix:
    """The training mixture: the share of rows that start with a pass-key or key–value sequence (the rest are natural
    text), and how often that sequence fills the whole row. A shorter one (length uniform in [N/4, N]) is followed by
    natural text, so questions sit at every position of the window: a model that only ever saw its question at the
    last position learns where the question is from its distance to ``<s>``, and then any method that moves positions
    inside the window (YaRN, PI, Self-Extend at 1×) breaks it for a reason real models do not share."""

    passkey: float = 0.3  # pass key is learnt fast; key–value retrieval needs the larger share (measured, docs/lab.md)
    kv: float = 0.6
    full_length: float = 0.75
    kv_pairs: tuple[int, int] = (4, 12)  # pairs per key–value training sequence, uniform in this range


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
        if draw >= self.mix.passkey + self.mix.kv:
            return text_sequence(rng, n, "train")["context"]
        size = n if rng.random() < self.mix.full_length else rng.randint(n // 4, n)
        if n - size < 16:  # too little room for a text piece: fill the row
            size = n
        if draw < self.mix.passkey:
            s = passkey_sequence(rng, size, "train")
        else:
            low, high = self.mix.kv_pairs
            pairs = rng.randint(low, high)
            while pairs > 1 and pairs * 5 + 8 > size // 2:  # keep at least half the sequence haystack
                pairs -= 1
            s = kv_sequence(rng, size, "train", pairs=pairs)
        ids = s["context"] + s["answer"]
        return ids + (text_sequence(rng, n - size, "train")["context"] if size < n else [])

    def __getitem__(self, index: int):
        from ...training.data import Example

        if not 0 <= index < self.count:
            raise IndexError(index)
        ids = self.sequence(index)
        return Example(ids, list(ids))
