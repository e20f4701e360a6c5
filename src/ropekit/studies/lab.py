"""``ropekit lab``: every method's claim tested end to end on a CPU — a small RoPE model trained from scratch at a
short native window, then extended 4× with every method under one budget and evaluated at 1×–16×.

Length-generalisation research answers "does this position scheme work beyond the window?" with small models trained
from scratch on tasks that need long-range retrieval (Ruoss et al. 2023 randomized positions; PoSE's and CREAM's own
ablations). The lab does the same with ropekit's own pieces, so it also checks them end to end:

1. **Pre-train** (cached under ``$ROPEKIT_CACHE/lab``): a 2-layer Llama (:class:`Shape`) learns a character-level
   mix of natural text (Shakespeare), pass-key sequences and key–value sequences at a native window of 128 tokens,
   on the transformers ``Trainer`` through ropekit's training components (:class:`ropekit.training.trainer.TrainingSet`,
   :class:`~ropekit.training.trainer.RopekitTrainer`, :class:`~ropekit.training.trainer.LossLog`). A second run loads the cache.
2. **Extend** the pre-trained model to 4× with every row of :data:`ROWS` — training-free, fine-tuned at 4×, or
   trained at the native window with a position strategy (CREAM, PoSE, RandPos) — through :func:`ropekit.extend`
   and the same training components; every trained row gets the same number of tokens and optimizer steps.
3. **Evaluate** every row with the task registry and the resumable runner (:func:`ropekit.eval.runner.evaluate`) at
   1×, 2×, 4×, 8× and 16× the native window — pass key, key–value retrieval by depth (the middle third reported
   apart) and perplexity — and render the usual report; ``lab.md`` checks the papers' claims against the numbers.

**Tokenizer and tasks.** A model this small does not transfer to a prompt format it never saw, so the lab has its
own character-level tokenizer (:func:`lab_tokenizer`: lower-case letters, punctuation, digits, 26 key symbols
``<A>``–``<Z>`` and marker tokens) and its own two retrieval tasks, registered in the evaluation task registry as
``lab-passkey`` and ``lab-kv``. Training sequences and evaluation prompts share these templates:

* pass key — ``<s> haystack… <key> d1..dk …haystack <query> <answer> d1..dk`` (k = 1–5 digits, distinct);
* key–value — ``<s> haystack… <K1> value1 …haystack… <K9> value9 …haystack <query> <Kg> <answer> value_g``
  (values of 1–4 distinct digits; pairs at evenly spaced depths, the asked pair's depth is reported);

where the haystack is one random phrase of 8–24 characters repeated (the shape of the usual "the grass is green"
filler). What never matches between training and evaluation:

* **values**: training keys and values have an even digit sum, evaluation ones an odd digit sum, so no evaluation
  answer ever occurs as a training answer;
* **fillers**: training phrases and text come from Shakespeare, evaluation phrases and the perplexity text from
  Milton's *Paradise Lost* (digits removed from both);
* **seeds**: training rows draw from ``random.Random("lab-train-…")``, evaluation items from ``"lab-eval-…"``.

The perplexity task is the suite's ``ppl`` (last 64 tokens of windows of *Paradise Lost*).

**Adding a row** is one line in :data:`ROWS` (label, method, arm, strategy, options); the budget, caching,
evaluation, report, ``--list`` and claim tables pick it up. Options reach the pieces they belong to: ``params`` →
:func:`ropekit.extend`, ``strategy_params`` → the position strategy, ``dataset`` → :class:`~ropekit.training.trainer.TrainingSet`,
``trainer`` → :class:`~ropekit.training.trainer.RopekitTrainer`. For example, the rows for LongRecipe's sentence-gapped
positions and LongLoRA's shifted sparse attention (``ropekit train --attention s2``) are::

    Row("longrecipe-pi", "linear", "native", strategy="longrecipe", dataset={"sentence_ends": SENTENCE_END_IDS}),
    Row("longlora-pi", "linear", "target", trainer={"s2": {"group_ratio": 0.25}}),
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..errors import RopekitError
from ..eval.scoring import score_answers
from ..eval.tasks import Task, evenly_spaced, register

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
        from ..embedded import cache_dir

        stamp = hashlib.sha1(json.dumps([VOCABULARY, TEXT_SOURCES[split]]).encode()).hexdigest()[:12]
        path = cache_dir() / "lab" / f"text-{split}-{stamp}.u8"
        if not path.is_file():
            from ..eval.corpus import natural_text

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
        from ..training.data import Example

        if not 0 <= index < self.count:
            raise IndexError(index)
        ids = self.sequence(index)
        return Example(ids, list(ids))


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation tasks (registered in the suite's task registry; scored by teacher forcing like passkey/kv)


def _score(model, tokenizer, items: list[dict], batch_size: int) -> list[dict]:
    scored = score_answers(model, [(s["context"], s["answer"]) for s in items], batch_size=batch_size)
    return [{**{k: v for k, v in s.items() if k not in ("context", "answer")}, "correct": r.correct,
             "answer_nll": round(r.answer_nll, 4), "value": tokenizer.decode(s["answer"]), "predicted": tokenizer.decode(r.predicted)}
            for s, r in zip(items, scored)]


def _far(model, rows: list[dict]) -> dict:
    """Accuracy over the items whose needle (or gold pair) sits at least the native window before the answer: the
    relative distances a model that cannot extrapolate has never seen."""
    from ..extension import native_length_of

    native = native_length_of(model.config)
    far = [r["correct"] for r in rows if r["distance"] >= native]
    return {"far": _percent(far) if far else None, "far_n": len(far)}


def run_lab_passkey(model, tokenizer, lengths, seed: int = 0, progress: bool = True, trials: int = 100, batch_size: int = 10) -> dict:
    """Pass-key accuracy per length; depths evenly spread over [0, 1], 1–5 digits; also reported by key length and
    for the needles at least the native window away from the answer (``far``)."""
    from tqdm.auto import tqdm

    check_lab_tokenizer(tokenizer, "lab-passkey")
    depths = evenly_spaced(10)
    out = {}
    for length in tqdm(list(lengths), desc="lab-passkey", disable=not progress, leave=False):
        items = [passkey_sequence(random.Random(f"lab-eval-passkey-{seed}-{length}-{t}"), length, "eval", depth=depths[t % len(depths)])
                 for t in range(trials)]
        rows = _score(model, tokenizer, items, batch_size)
        by_digits = {str(k): _percent([r["correct"] for r in rows if r["digits"] == k]) for k in sorted({r["digits"] for r in rows})}
        out[length] = {"score": _percent([r["correct"] for r in rows]), "n": len(rows), "by_digits": by_digits, **_far(model, rows),
                       "samples": rows}
    return out


def middle_third(depth: float) -> bool:
    return 1 / 3 <= depth <= 2 / 3


def run_lab_kv(model, tokenizer, lengths, seed: int = 0, progress: bool = True, pairs: int = 9, trials: int = 12,
               batch_size: int = 12) -> dict:
    """Key–value accuracy per length: ``trials`` items per gold slot (slots at evenly spaced depths); ``positions``
    is accuracy per depth, ``middle_third`` the accuracy over the slots with depth in [1/3, 2/3] and ``far`` over the
    gold pairs at least the native window away from the answer."""
    from tqdm.auto import tqdm

    check_lab_tokenizer(tokenizer, "lab-kv")
    out = {}
    for length in tqdm(list(lengths), desc="lab-kv", disable=not progress, leave=False):
        items = [kv_sequence(random.Random(f"lab-eval-kv-{seed}-{length}-{g}-{t}"), length, "eval", pairs=pairs, gold=g)
                 for g in range(pairs) for t in range(trials)]
        rows = _score(model, tokenizer, items, batch_size)
        depths = evenly_spaced(pairs)
        positions = {str(d): _percent([r["correct"] for r in rows if r["gold"] == g]) for g, d in enumerate(depths)}
        out[length] = {"score": _percent([r["correct"] for r in rows]), "n": len(rows), "positions": positions,
                       "middle_third": _percent([r["correct"] for r in rows if middle_third(r["depth"])]),
                       "middle_n": sum(middle_third(r["depth"]) for r in rows), **_far(model, rows), "samples": rows}
    return out


def _percent(flags: list[bool]) -> float:
    return 100.0 * sum(flags) / len(flags) if flags else 0.0


register(Task("lab-passkey", "lab pass key: 1–5 digits after <key> in a repeated-phrase haystack (lab tokenizer only)",
              "accuracy %", True, run_lab_passkey, {"trials": 100, "batch_size": 10}))
register(Task("lab-kv", "lab key–value retrieval: 9 pairs at evenly spaced depths, one asked (lab tokenizer only)",
              "accuracy %", True, run_lab_kv, {"pairs": 9, "trials": 12, "batch_size": 12}))


# ----------------------------------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class Shape:
    """The lab model: a Llama with RoPE. θ = 200 puts the longest RoPE wavelength (2π·θ^((d-2)/d) ≈ 900 tokens) at
    ~7× the 128-token window (Llama-2's, θ = 1e4 and d = 128: 54K, is at ~13× its 4K window), so interpolation
    methods meet the same kind of spectrum. Chosen by measurement (docs/lab.md): with θ = 500 or 2000 the
    unextended model still finds 16–57% of the needles placed beyond its window at 4×, because slowly rotating
    dimensions make those distances look trained; with θ = 200 it finds almost none, so the lab can tell a method
    that extends from one that does not."""

    native: int = 128
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 512
    theta: float = 200.0


def lab_model(shape: Shape, seed: int):
    """A freshly initialised ``LlamaForCausalLM`` of ``shape`` over the lab vocabulary (fp32, SDPA attention)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=len(VOCABULARY), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
                         max_position_embeddings=shape.native, rope_parameters={"rope_type": "default", "rope_theta": shape.theta},
                         tie_word_embeddings=False, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Training: ropekit's training components on the transformers Trainer


def answer_weighted_loss(other_weight: float = 1.0):
    """A ``compute_loss_func`` for the Trainer: mean cross-entropy of the answer tokens (from ``<answer>`` to the next
    ``<s>``) plus ``other_weight`` × mean cross-entropy of every other token. Answers are ~3 of 128 tokens; a plain
    token mean would barely train retrieval, and answers alone leave the copy-from-earlier signal of the haystack
    unused."""

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits[:, :-1].float()
        labels = labels.to(logits.device)
        index = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
        last_answer = torch.where(labels == ANSWER, index, -1).cummax(dim=1).values
        last_start = torch.where(labels == BOS, index, -1).cummax(dim=1).values
        answer = ((last_answer > last_start) & (labels != ANSWER))[:, 1:]
        targets = labels[:, 1:]
        valid = targets != -100
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).clamp_min(0),
                                                reduction="none").view_as(targets)
        total = logits.new_zeros(())
        for mask, weight in ((answer & valid, 1.0), (~answer & valid, other_weight)):
            if mask.any():
                total = total + weight * nll[mask].mean()
        return total

    return loss


def stack_rows(rows: list[dict]) -> dict:
    """Every lab row has the same length: one ``[B, N]`` batch with an all-ones mask (ropekit's collator for rows
    with position jumps), instead of the packed single row it builds for contiguous rows — causal attention over
    ``B`` rows of ``N`` costs B× less than over one packed row of ``B·N``."""
    from ..training.trainer import collate

    return collate([{**r, "jumps": True} for r in rows])


@dataclass(frozen=True)
class Schedule:
    """One training run's optimisation: ``steps`` optimizer steps of ``batch`` sequences of ``length`` tokens."""

    steps: int
    batch: int
    length: int
    learning_rate: float
    warmup: int
    scheduler: str = "cosine_with_min_lr"  # a transformers lr_scheduler_type; this one decays to min_lr_rate × peak
    min_lr_rate: float = 0.1
    other_weight: float = 1.0
    mix: Mix = Mix()


def train_lab(model, tokenizer, schedule: Schedule, output: Path, seed: int, strategy: str = "contiguous",
              target_length: int | None = None, strategy_params: dict | None = None, callbacks: list | None = None,
              save_steps: int | None = None, trainer: dict | None = None, dataset: dict | None = None, progress: bool = True) -> dict:
    """Train ``model`` on lab sequences with ``strategy`` positions over ``[0, target_length)``, save it (and the
    tokenizer) to ``output``; resumes from the last ``checkpoint-*`` in ``output``. ``trainer`` / ``dataset``: extra
    :class:`~ropekit.training.trainer.RopekitTrainer` / :class:`~ropekit.training.trainer.TrainingSet` arguments. Returns a summary."""
    from transformers import TrainingArguments

    from ..training.positions import check_params, get_strategy
    from ..training.trainer import EpochCallback, LossLog, RopekitTrainer, TrainingSet

    output.mkdir(parents=True, exist_ok=True)
    params = check_params(get_strategy(strategy), strategy_params or {})
    rows = LabSequences(schedule.steps * schedule.batch, schedule.length, seed, schedule.mix)
    if strategy != "contiguous":  # a position strategy may look at every row up front; extension sets are small
        rows = list(rows)
    dataset = TrainingSet(rows, strategy, schedule.length, target_length or schedule.length, seed=seed, params=params, **(dataset or {}))
    kwargs = {"lr_scheduler_kwargs": {"min_lr_rate": schedule.min_lr_rate}} if schedule.scheduler == "cosine_with_min_lr" else {}
    args = TrainingArguments(
        output_dir=str(output), per_device_train_batch_size=schedule.batch, max_steps=schedule.steps, num_train_epochs=1,
        learning_rate=schedule.learning_rate, lr_scheduler_type=schedule.scheduler, warmup_steps=schedule.warmup,
        adam_beta1=0.9, adam_beta2=0.98, weight_decay=0.0, max_grad_norm=1.0, logging_steps=50,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or schedule.steps, save_total_limit=1,
        report_to=[], seed=seed, data_seed=seed, remove_unused_columns=False, dataloader_num_workers=0,
        include_num_input_tokens_seen=True, disable_tqdm=not progress, use_cpu=not torch.cuda.is_available(), **kwargs)
    log = LossLog(output / "training_log.jsonl")
    model.config.use_cache = False
    runner = RopekitTrainer(model=model, args=args, train_dataset=dataset, data_collator=stack_rows, processing_class=tokenizer,
                            compute_loss_func=answer_weighted_loss(schedule.other_weight),
                            callbacks=[EpochCallback(dataset), log, *(callbacks or [])], **(trainer or {}))
    started, cpu = time.time(), time.process_time()
    resume = any(output.glob("checkpoint-*"))
    runner.train(resume_from_checkpoint=True if resume else None)
    model.config.use_cache = True
    runner.save_model(str(output))
    for stale in output.glob("checkpoint-*"):
        shutil.rmtree(stale)
    return {"steps": runner.state.global_step, "tokens": runner.state.num_input_tokens_seen, "final_loss": log.rows[-1]["loss"] if log.rows else None,
            "seconds": round(time.time() - started, 1), "cpu_seconds": round(time.process_time() - cpu, 1), "resumed": resume,
            "schedule": asdict(schedule), "strategy": strategy, "strategy_params": params, "target_length": target_length}


class LearningCurve(TrainerCallback):
    """In-window pass-key and key–value accuracy every ``every`` steps (evaluation split, a fixed small set), with
    the process CPU time, so every pre-training records how fast retrieval appears.

    With a ``path``, every checkpoint save also writes the curve so far and the wall/CPU seconds spent so far; a run
    resumed from that checkpoint starts from them, so an interrupted pre-training reports its whole curve and the
    cost of the model (the work after the last checkpoint, redone on resume, is counted once)."""

    def __init__(self, tokenizer, native: int, every: int, trials: int = 100, pairs: int = 9, path: Path | None = None):
        self.tokenizer, self.native, self.every, self.trials, self.pairs, self.path = tokenizer, native, every, trials, pairs, path
        self.rows: list[dict] = []
        self.before = {"seconds": 0.0, "cpu_seconds": 0.0}
        self.started, self.cpu0 = time.time(), time.process_time()

    def spent(self) -> dict:
        """Wall and CPU seconds of this pre-training, the saved part of interrupted runs included."""
        return {"seconds": round(self.before["seconds"] + time.time() - self.started, 1),
                "cpu_seconds": round(self.before["cpu_seconds"] + time.process_time() - self.cpu0, 1)}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step and self.path is not None and self.path.is_file():  # resumed: the state is the checkpoint's
            saved = json.loads(self.path.read_text())
            if saved["step"] == state.global_step:
                self.rows, self.before = saved["rows"], saved["cost"]

    def on_save(self, args, state, control, **kwargs):
        if self.path is not None:
            self.path.write_text(json.dumps({"step": state.global_step, "rows": self.rows, "cost": self.spent()}))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every and state.global_step != state.max_steps:
            return
        model.eval()
        passkey = run_lab_passkey(model, self.tokenizer, [self.native], seed=1, progress=False, trials=self.trials)[self.native]
        kv = run_lab_kv(model, self.tokenizer, [self.native], seed=1, progress=False, pairs=self.pairs,
                        trials=max(1, self.trials // self.pairs))[self.native]
        model.train()
        self.rows.append({"step": state.global_step, "cpu_seconds": self.spent()["cpu_seconds"],
                          "passkey": passkey["score"], "passkey_by_digits": passkey["by_digits"], "kv": kv["score"]})


# ----------------------------------------------------------------------------------------------------------------------
# The rows: every method under one budget, one line per row (label, method, arm, strategy, options).


@dataclass(frozen=True)
class Row:
    """One row of the lab table.

    ``arm``: ``free`` (training-free: the method applied to the pre-trained model), ``target`` (the method applied,
    then fine-tuned on sequences of the target length, 4× native) or ``native`` (the method applied, then trained on
    native-length sequences whose position ids ``strategy`` spreads over the target). ``params``: method parameters;
    ``strategy_params``: position-strategy parameters; ``trainer`` / ``dataset``: extra
    :class:`~ropekit.training.trainer.RopekitTrainer` / :class:`~ropekit.training.trainer.TrainingSet` arguments (e.g. a
    training-time attention, or the sentence ends :data:`SENTENCE_END_IDS` a strategy needs)."""

    label: str
    method: str
    arm: str
    strategy: str = "contiguous"
    params: dict = field(default_factory=dict)
    strategy_params: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)


ARMS = {"free": "training-free", "target": "fine-tuned at 4×", "native": "trained at the native window"}
EABF = {"layers": "all"}  # the lab model has 2 layers: the paper's layers ≥ 2 would leave EABF = ABF (the reference code scales all)

ROWS = (
    Row("none", "none", "free"),
    Row("dynamic", "dynamic", "free"),
    Row("yarn", "yarn", "free"),
    Row("eabf", "eabf", "free", params=EABF),
    Row("self-extend", "self_extend", "free"),
    Row("ft-control", "none", "target"),
    Row("ft-pi", "linear", "target"),
    Row("ft-yarn", "yarn", "target"),
    Row("ft-abf", "abf", "target"),
    Row("ft-eabf", "eabf", "target", params=EABF),
    Row("cream-pi", "linear", "native", strategy="cream"),
    Row("cream-yarn", "yarn", "native", strategy="cream"),
    Row("pose-pi", "linear", "native", strategy="pose"),
    Row("pose-yarn", "yarn", "native", strategy="pose"),
    Row("randpos", "none", "native", strategy="randpos"),
    # LongRecipe's stage 0 only (sentence-gapped positions; no replay or merge), beside pose-pi at the same budget
    Row("longrecipe-pi", "linear", "native", strategy="longrecipe", dataset={"sentence_ends": SENTENCE_END_IDS}),
    # LongLoRA's shifted sparse attention while training at 4× (full fine-tune here, no LoRA), beside ft-pi
    Row("longlora-pi", "linear", "target", trainer={"s2": {"group_ratio": 0.25}}),
)


def get_rows(labels: list[str] | None = None) -> list[Row]:
    if not labels:
        return list(ROWS)
    by_label = {r.label: r for r in ROWS}
    unknown = [label for label in labels if label not in by_label]
    if unknown:
        raise RopekitError(f"the lab has no row {unknown[0]!r}", f"choose from: {', '.join(by_label)}")
    return [by_label[label] for label in labels]


# ----------------------------------------------------------------------------------------------------------------------
# Budgets


@dataclass(frozen=True)
class Budget:
    """What one lab run costs: the pre-training, the extension budget every trained row gets (the same tokens and
    optimizer steps: ``extend_steps`` × ``extend_tokens`` tokens, i.e. batch 8 at 4× or batch 32 at 1×), the
    evaluation grid (multiples of the native window) and the evaluation sizes."""

    name: str
    pretrain: Schedule
    extend_steps: int
    extend_learning_rate: float = 5e-4
    extend_warmup: int = 20
    extend_tokens: int = 4096
    factor: int = 4
    multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    tasks: dict = field(default_factory=dict)
    rows: tuple[str, ...] | None = None  # None: every row of ROWS
    curve_every: int = 500

    def extend_schedule(self, length: int) -> Schedule:
        return Schedule(self.extend_steps, self.extend_tokens // length, length, self.extend_learning_rate, self.extend_warmup,
                        mix=self.pretrain.mix)


_PRETRAIN = Schedule(steps=3000, batch=32, length=128, learning_rate=2e-3, warmup=100)
BUDGETS = {
    "default": Budget("default", _PRETRAIN, extend_steps=200,
                      tasks={"lab-passkey": {"trials": 100, "batch_size": 10}, "lab-kv": {"trials": 12, "batch_size": 12},
                             "ppl": {"windows": 32, "tail": 64}}),
    "quick": Budget("quick", replace(_PRETRAIN, steps=1000), extend_steps=60, multiples=(1, 2, 4),
                    tasks={"lab-passkey": {"trials": 50, "batch_size": 10}, "lab-kv": {"trials": 4, "batch_size": 12},
                           "ppl": {"windows": 8, "tail": 64}},
                    rows=("none", "dynamic", "yarn", "self-extend", "cream-yarn"), curve_every=250),
}


# ----------------------------------------------------------------------------------------------------------------------
# The recipe, top to bottom


DATA_VERSION = 3  # bump when the generators change what a training row holds: cached pre-trainings are then redone


def pretrained_dir(budget: Budget, shape: Shape, seed: int) -> Path:
    """Where the pre-trained model of (budget, shape, seed) is cached: ``$ROPEKIT_CACHE/lab/<budget>-seed<k>-<hash>``.
    The hash covers everything that changes the weights, so a changed recipe never reuses a stale model."""
    from ..version import __version__
    from ..embedded import cache_dir

    recipe = {"shape": asdict(shape), "schedule": asdict(budget.pretrain), "vocabulary": VOCABULARY, "seed": seed,
              "text": TEXT_SOURCES, "data": DATA_VERSION, "ropekit": __version__, "torch": torch.__version__}
    stamp = hashlib.sha1(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return cache_dir() / "lab" / f"{budget.name}-seed{seed}-{stamp}"


def pretrain(budget: Budget, shape: Shape = Shape(), seed: int = 0, progress: bool = True) -> Path:
    """Pre-train the lab model (or find it in the cache); returns its directory (a checkpoint ``ropekit.load_model``
    loads, with the lab tokenizer). An interrupted pre-training resumes from its last checkpoint."""
    out = pretrained_dir(budget, shape, seed)
    if (out / "lab_pretrain.json").is_file():
        return out
    _say(progress, f"lab: pre-training seed {seed} ({budget.pretrain.steps} steps) into {out}")
    tokenizer = lab_tokenizer()
    model = lab_model(shape, seed)
    curve = LearningCurve(tokenizer, shape.native, budget.curve_every, pairs=budget.tasks.get("lab-kv", {}).get("pairs", 9),
                          path=out / "lab_pretrain_progress.json")
    summary = train_lab(model, tokenizer, replace(budget.pretrain, length=shape.native), out, seed,
                        callbacks=[curve], save_steps=500, progress=progress)
    summary.update({"shape": asdict(shape), "parameters": sum(p.numel() for p in model.parameters()), "seed": seed,
                    "learning_curve": curve.rows, "threads": torch.get_num_threads(), "cost": curve.spent()})
    (out / "lab_pretrain.json").write_text(json.dumps(summary, indent=1))
    return out


def _cost(started: float, cpu: float) -> dict:
    """Wall and CPU (user+sys of this process, all threads) seconds since ``started`` / ``cpu``."""
    return {"seconds": round(time.time() - started, 1), "cpu_seconds": round(time.process_time() - cpu, 1)}


def _say(progress: bool, message: str) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message)


def train_row(row: Row, base: Path, budget: Budget, out: Path, seed: int, progress: bool = True) -> Path:
    """Extend the pre-trained model with ``row.method`` at 4× and train it under the row's arm; skipped when
    ``out`` already holds this row trained from this pre-trained model (else it is trained afresh)."""
    from ..extension import extend
    from ..models import load_model

    done = out / "lab_row.json"
    if done.is_file():
        kept = json.loads(done.read_text())
        if kept.get("base") == str(base) and kept.get("row") == _as_json(asdict(row)):  # compared as written (sets become lists)
            return out
    if out.exists():
        shutil.rmtree(out)
    _say(progress, f"lab: {row.label}: {row.method} at {budget.factor}×, {ARMS[row.arm]}" + (f" ({row.strategy})" if row.strategy != "contiguous" else ""))
    started, cpu = time.time(), time.process_time()
    model, tokenizer = load_model(base, device="cpu" if not torch.cuda.is_available() else "auto", dtype="float32")
    native = model.config.max_position_embeddings
    target = budget.factor * native
    extend(model, row.method, target_length=target, **row.params)
    length = target if row.arm == "target" else native
    summary = train_lab(model, tokenizer, budget.extend_schedule(length), out, seed, strategy=row.strategy, target_length=target,
                        strategy_params=row.strategy_params, trainer=row.trainer, dataset=row.dataset, progress=progress)
    record = {"row": asdict(row), "base": str(base), **summary, "cost": _cost(started, cpu)}
    (out / "lab_row.json").write_text(json.dumps(record, indent=1, default=_json_default))
    return out


def _json_default(value):
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)


def _as_json(value):
    """``value`` as it reads back from ``lab_row.json``."""
    return json.loads(json.dumps(value, default=_json_default))


def run_seed(budget: Budget, rows: list[Row], seed: int, out: Path, device: str = "auto", progress: bool = True,
             shape: Shape = Shape()) -> dict:
    """One complete lab for one pre-training seed: pre-train (cached) → train every trained row → evaluate every
    row (resumable) → report. Returns the results dict, with the lab's timings under ``results["lab"]``."""
    from ..eval.runner import RunSpec, evaluate
    from .report import render

    out.mkdir(parents=True, exist_ok=True)
    base = pretrain(budget, shape, seed, progress)
    # what each stage cost when it ran (a cached stage reports its original cost)
    stages = {"pretrain": json.loads((base / "lab_pretrain.json").read_text())["cost"], "extend": {}}
    target = budget.factor * shape.native
    specs = []
    for row in rows:
        if row.arm == "free":
            specs.append(RunSpec(str(base), None if row.method == "none" else row.method, dict(row.params), target, label=row.label))
            continue
        path = train_row(row, base, budget, out / "runs" / row.label, seed, progress)
        stages["extend"][row.label] = json.loads((path / "lab_row.json").read_text())["cost"]
        specs.append(RunSpec(str(path), label=row.label))
    started, cpu = time.time(), time.process_time()
    lengths = [m * shape.native for m in budget.multiples]
    _say(progress, f"lab: evaluating {len(specs)} rows at {', '.join(map(str, lengths))} tokens")
    results = evaluate(specs, budget.tasks, lengths, out, seed=0, device=device, kind="lab", progress=progress)
    spent = out / "lab_evaluation_cost.json"  # evaluation resumes from its cache: the cost adds up over the calls
    before = json.loads(spent.read_text()) if spent.is_file() else {"seconds": 0.0, "cpu_seconds": 0.0}
    now = _cost(started, cpu)
    stages["evaluate"] = {k: round(before[k] + now[k], 1) for k in now}
    spent.write_text(json.dumps(stages["evaluate"]))
    total = {k: round(stages["pretrain"][k] + sum(v[k] for v in stages["extend"].values()) + stages["evaluate"][k], 1) for k in now}
    results["lab"] = {"budget": asdict(budget), "shape": asdict(shape), "pretrain_seed": seed, "pretrained": str(base),
                      "pretrain_summary": json.loads((base / "lab_pretrain.json").read_text()),
                      "rows": [asdict(r) for r in rows], "arms": {r.label: r.arm for r in rows}, "stages": stages, **total}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    render(out)
    return results


def combine(per_seed: list[dict]) -> dict:
    """Results of several pre-training seeds → one results dict (same schema) whose scores are the seed means, with
    ``seeds`` (the per-seed scores), ``min``/``max`` and the pooled ``n`` in every cell."""
    first = per_seed[0]
    runs = []
    for index, run in enumerate(first["runs"]):
        merged = {k: v for k, v in run.items() if k != "results"}
        merged["results"] = {}
        for task, by_length in run["results"].items():
            merged["results"][task] = {}
            for length in by_length:
                cells = [r["runs"][index]["results"][task][length] for r in per_seed]
                scores = [c["score"] for c in cells]
                cell = {"score": sum(scores) / len(scores), "seeds": scores, "min": min(scores), "max": max(scores),
                        "n": sum(c["n"] for c in cells)}
                if "positions" in cells[0]:
                    cell["positions"] = {p: sum(c["positions"][p] for c in cells) / len(cells) for p in cells[0]["positions"]}
                if cells[0].get("far") is not None:
                    counted = [c for c in cells if c.get("far") is not None]
                    cell["far_n"] = sum(c["far_n"] for c in counted)
                    cell["far"] = sum(c["far"] * c["far_n"] for c in counted) / max(cell["far_n"], 1)
                    cell["far_seeds"] = [c["far"] for c in counted]
                if "middle_third" in cells[0]:
                    cell["middle_third"] = sum(c["middle_third"] for c in cells) / len(cells)
                    cell["middle_seeds"] = [c["middle_third"] for c in cells]
                    cell["middle_n"] = sum(c["middle_n"] for c in cells)
                merged["results"][task][length] = cell
        runs.append(merged)
    combined = {k: v for k, v in first.items() if k not in ("runs", "lab", "path")}
    combined.update({"runs": runs, "kind": f"lab (mean of {len(per_seed)} pre-training seeds)" if len(per_seed) > 1 else "lab",
                     "seconds": round(sum(r["lab"]["seconds"] for r in per_seed), 1)})
    combined["lab"] = {**{k: v for k, v in first["lab"].items() if k not in ("pretrain_seed", "pretrained", "pretrain_summary", "stages", "seconds", "cpu_seconds")},
                       "seeds": [{"seed": r["lab"]["pretrain_seed"], "pretrained": r["lab"]["pretrained"], "stages": r["lab"]["stages"],
                                  "seconds": r["lab"]["seconds"], "cpu_seconds": r["lab"]["cpu_seconds"],
                                  "pretrain": {k: r["lab"]["pretrain_summary"].get(k) for k in ("steps", "seconds", "cpu_seconds", "parameters", "learning_curve", "threads")}}
                                 for r in per_seed]}
    return combined


def lab(output: str | Path = "ropekit-lab", quick: bool = False, seeds: tuple[int, ...] | list[int] = (0,), rows: list[str] | None = None,
        device: str = "auto", progress: bool = True, shape: Shape = Shape()) -> dict:
    """Run (or resume) the lab; returns the combined results, also written to ``output/results.json`` with the
    report (``report.md``/``report.html``) and ``output/lab.md`` (tables with the spread over seeds, the papers'
    claims checked). One directory per pre-training seed (``output/seed-<k>``) holds that seed's own results."""
    budget = BUDGETS["quick" if quick else "default"]
    chosen = get_rows(rows or list(budget.rows or []))
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise RopekitError("no seed given", "pass e.g. --seeds 0,1,2")
    out = Path(output).expanduser()
    previous = out / "lab.json"
    if previous.is_file():
        recorded = json.loads(previous.read_text())
        if recorded.get("budget") != budget.name:
            raise RopekitError(f"{out} holds a {recorded.get('budget')!r} lab, not a {budget.name!r} one",
                               "choose another --output, or run with the same --quick setting to resume it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "lab.json").write_text(json.dumps({"budget": budget.name, "seeds": seeds, "rows": [r.label for r in chosen]}))
    per_seed = [run_seed(budget, chosen, seed, out / f"seed-{seed}", device, progress, shape) for seed in seeds]
    combined = combine(per_seed)
    from .report import render

    (out / "results.json").write_text(json.dumps(combined, indent=1, default=str))
    render(out)
    checks = claim_checks(combined)
    combined["claims"] = checks
    (out / "results.json").write_text(json.dumps(combined, indent=1, default=str))
    (out / "lab.md").write_text(lab_markdown(combined, checks))
    combined["path"] = str(out / "results.json")
    return combined


# ----------------------------------------------------------------------------------------------------------------------
# The papers' claims, checked against the numbers


def _run(results: dict, label: str) -> dict | None:
    return next((r for r in results["runs"] if r["label"] == label), None)


def _cell(results: dict, label: str, task: str, multiple: int, key: str = "score"):
    run = _run(results, label)
    native = results["lab"]["shape"]["native"]
    cell = (run or {}).get("results", {}).get(task, {}).get(str(multiple * native))
    if cell is None:
        return None
    if cell.get(key) is None:
        return None
    prefix = {"middle_third": "middle", "far": "far"}.get(key)
    seeds = cell.get(f"{prefix}_seeds" if prefix else "seeds", [cell[key]])
    n = cell.get(f"{prefix}_n" if prefix else "n", 0)
    return {"mean": cell[key], "seeds": seeds, "n": n}


PPL_TOLERANCE = 0.01


def compare(results: dict, a: str, b: str, task: str, multiple: int, key: str = "score", strict: bool = True) -> dict:
    """Is row ``a`` better than row ``b`` (``strict``) or at least as good? Accuracies: the pooled difference against
    two binomial standard errors, and how many seeds agree; perplexity: how many seeds agree."""
    x, y = _cell(results, a, task, multiple, key), _cell(results, b, task, multiple, key)
    if x is None or y is None:
        return {"verdict": "not run", "text": f"{a} vs {b}: not run"}
    higher = task != "ppl"
    diff = (x["mean"] - y["mean"]) * (1 if higher else -1)
    seeds = len(x["seeds"])
    if higher:
        agree = sum(p > q for p, q in zip(x["seeds"], y["seeds"]))
        worse = sum(p < q for p, q in zip(x["seeds"], y["seeds"]))
        pa, pb = x["mean"] / 100, y["mean"] / 100
        se = 100 * math.sqrt(pa * (1 - pa) / max(x["n"], 1) + pb * (1 - pb) / max(y["n"], 1))
        better, behind = diff > 2 * se and agree > seeds / 2, diff < -2 * se and worse > seeds / 2
        detail = f"{x['mean']:.1f} vs {y['mean']:.1f} (Δ {diff:+.1f} ± {2 * se:.1f}, {agree}/{seeds} seeds ahead)"
    else:  # perplexity: a seed counts when the two differ by more than PPL_TOLERANCE
        agree = sum(p < q * (1 - PPL_TOLERANCE) for p, q in zip(x["seeds"], y["seeds"]))
        worse = sum(p > q * (1 + PPL_TOLERANCE) for p, q in zip(x["seeds"], y["seeds"]))
        better, behind = agree == seeds, worse == seeds
        detail = f"{x['mean']:.2f} vs {y['mean']:.2f} ({agree}/{seeds} seeds lower by > {PPL_TOLERANCE:.0%})"
    if better:
        verdict = "confirmed"
    elif behind:
        verdict = "refuted"
    else:
        verdict = "not resolved" if strict else "tie"  # "a ≥ b" is consistent with a tie
    return {"verdict": verdict, "text": detail, "diff": diff}


def claim_checks(results: dict) -> list[dict]:
    """The lab's own requirements and the papers' claims, each with the evidence and a verdict."""
    labels = {r["label"] for r in results["runs"]}
    multiples = results["lab"]["budget"]["multiples"]
    checks = []

    def add(group, claim, source, verdicts, evidence):
        if not verdicts or "not run" in verdicts:
            outcome = "not run"
        elif all(v == "confirmed" for v in verdicts):
            outcome = "confirmed"
        elif all(v in ("confirmed", "tie") for v in verdicts):
            outcome = "consistent (tie within noise)"
        elif all(v == "refuted" for v in verdicts):
            outcome = "refuted"
        elif any(v in ("confirmed", "tie") for v in verdicts):
            outcome = "partly"
        else:
            outcome = "not resolved"
        checks.append({"group": group, "claim": claim, "source": source, "verdict": outcome, "evidence": evidence})

    def at_least(label, task, multiple, threshold, key="score", below=False):
        cell = _cell(results, label, task, multiple, key)
        name = f"{label} {task}{' ' + key.replace('_', ' ') if key != 'score' else ''} @{multiple}×"
        if cell is None:
            return "not run", f"{name}: not run"
        ok = cell["mean"] <= threshold if below else cell["mean"] >= threshold
        spread = f" (seeds {min(cell['seeds']):.0f}–{max(cell['seeds']):.0f})" if len(cell["seeds"]) > 1 else ""
        return ("confirmed" if ok else "refuted"), f"{name} = {cell['mean']:.1f}{spread}"

    if "none" in labels:
        parts = [at_least("none", "lab-passkey", 1, 95), at_least("none", "lab-kv", 1, 90)]
        add("lab", "the pre-trained model retrieves in its window (pass key ≥ 95%, key–value ≥ 90%)", "issue",
            [p[0] for p in parts], "; ".join(p[1] for p in parts))
        if 4 in multiples:
            parts = [at_least("none", task, 4, 10, below=True) for task in ("lab-passkey", "lab-kv")]
            add("lab", "unextended, it fails at 4× (≤ 10% on all items)", "issue", [p[0] for p in parts], "; ".join(p[1] for p in parts))
            parts = [at_least("none", task, 4, 10, key="far", below=True) for task in ("lab-passkey", "lab-kv")]
            add("lab", "unextended, it fails at 4× on the items beyond its window (needle ≥ 128 tokens before the answer: ≤ 10%)",
                "issue (re-scoped, docs/lab.md)", [p[0] for p in parts], "; ".join(p[1] for p in parts))
    tuned = [r["label"] for r in results["runs"] if results["lab"]["arms"].get(r["label"]) == "target" and r["label"] != "ft-control"]
    if tuned and 8 in multiples:
        def worst(label):
            cells = [_cell(results, label, t, m) for t in ("lab-passkey", "lab-kv") for m in (4, 8)]
            return min(c["mean"] for c in cells)

        best = max(tuned, key=worst)
        parts = [at_least(best, t, m, 90) for t in ("lab-passkey", "lab-kv") for m in (4, 8)]
        add("lab", "the best fine-tuned method retrieves ≥ 90% at 4× and 8×", "issue", [p[0] for p in parts],
            f"best: {best}; " + "; ".join(p[1] for p in parts))
    for a, b, strict in (("ft-eabf", "ft-abf", False), ("ft-abf", "ft-pi", True), ("ft-abf", "ft-yarn", True)):
        if {a, b} <= labels:
            for task in ("lab-passkey", "ppl"):
                found = [(m, compare(results, a, b, task, m, strict=strict)) for m in (4, 8) if m in multiples]
                add("paper", f"fine-tuned {a[3:].upper()} {'>' if strict else '≥'} {b[3:].upper()} on {'pass key' if task != 'ppl' else 'perplexity'}",
                    "Zhang et al. 2024 (Entropy-ABF), Tables 2 and 4", [c["verdict"] for _, c in found],
                    "; ".join(f"@{m}×: {c['text']}" for m, c in found))
    for variant in ("pi", "yarn"):
        a, b = f"cream-{variant}", f"pose-{variant}"
        if {a, b} <= labels:
            found = [(m, compare(results, a, b, "lab-kv", m, key="middle_third", strict=False)) for m in (2, 4) if m in multiples]
            add("paper", f"CREAM ≥ PoSE on middle-third key–value retrieval within the target ({variant.upper()}, same budget)",
                "Wu et al. 2024 (CREAM), Lost-in-the-Middle table", [c["verdict"] for _, c in found],
                "; ".join(f"@{m}×: {c['text']}" for m, c in found))
    if {"self-extend", "none"} <= labels:
        parts = []
        for task in ("lab-passkey", "lab-kv"):
            reference = _cell(results, "none", task, 1)
            if 4 in multiples:
                parts.append(at_least("self-extend", task, 4, reference["mean"] - 10))
        add("paper", "Self-Extend recovers retrieval at its target (4×) without training (within 10 points of the model's in-window accuracy)",
            "Jin et al. 2024 (LLM Maybe LongLM)", [p[0] for p in parts], "; ".join(p[1] for p in parts))
    if "ft-control" in labels:
        for label in tuned:
            found = [(m, compare(results, label, "ft-control", "lab-passkey", m)) for m in (4, 8) if m in multiples]
            add("control", f"{label} beats the fine-tuned control (no RoPE change) on pass key", "lab-feasibility: a method that does not beat it has shown nothing",
                [c["verdict"] for _, c in found], "; ".join(f"@{m}×: {c['text']}" for m, c in found))
    return checks


# ----------------------------------------------------------------------------------------------------------------------
# lab.md


def _machine() -> str:
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{model}, {os.cpu_count()} CPU cores, torch {torch.get_num_threads()} threads"


def _format(cell, key="score", digits=0) -> str:
    if cell is None or cell.get(key) is None:
        return "-"
    prefix = {"middle_third": "middle", "far": "far"}.get(key)
    seeds = cell.get(f"{prefix}_seeds" if prefix else "seeds", [])
    text = f"{cell[key]:.{digits}f}"
    if len(seeds) > 1:
        text += f" ({min(seeds):.{digits}f}–{max(seeds):.{digits}f})"
    return text


def lab_markdown(results: dict, checks: list[dict]) -> str:
    from ..lengths import format_length

    info = results["lab"]
    native = info["shape"]["native"]
    multiples = info["budget"]["multiples"]
    seeds = info["seeds"]
    cpu = sum(s["cpu_seconds"] for s in seeds)
    wall = sum(s["seconds"] for s in seeds)
    env = results["environment"]
    device = "" if env["device"].startswith("CPU") else f"; {env['device']}"
    lines = [f"# ropekit lab ({info['budget']['name']} budget, {len(seeds)} pre-training seed{'s' if len(seeds) > 1 else ''})", "",
             f"- machine: {_machine()}{device}; torch {env['torch']}, transformers {env['transformers']}, ropekit {env['ropekit']}",
             f"- command: `{env['command']}`",
             f"- time: {wall:.0f} s wall, {cpu:.0f} s CPU (user+sys) in all; CPU/2 = {cpu / 2:.0f} s estimates the wall time on 2 quiet cores",
             f"- model: {json.dumps(info['shape'])}, {seeds[0]['pretrain']['parameters']:,} parameters; native window {native}, "
             f"every method extended to {info['budget']['factor']}× = {info['budget']['factor'] * native} tokens", ""]
    lines += ["## Time per stage (seconds: wall / CPU; what each stage cost when it ran)", "",
              "| seed | pre-training | trained rows | evaluation | total |", "|---|---|---|---|---|"]
    for s in seeds:
        st = s["stages"]
        rows_wall = sum(v["seconds"] for v in st["extend"].values())
        rows_cpu = sum(v["cpu_seconds"] for v in st["extend"].values())
        lines.append(f"| {s['seed']} | {st['pretrain']['seconds']:.0f} / {st['pretrain']['cpu_seconds']:.0f} | {rows_wall:.0f} / {rows_cpu:.0f} | "
                     f"{st['evaluate']['seconds']:.0f} / {st['evaluate']['cpu_seconds']:.0f} | {s['seconds']:.0f} / {s['cpu_seconds']:.0f} |")
    lines += ["", "Pre-training learning curve (in-window accuracy %, evaluation split; CPU seconds of the training process):", "",
              "| seed | " + " | ".join(f"step {p['step']}" for p in seeds[0]["pretrain"]["learning_curve"]) + " |",
              "|---|" + "---|" * len(seeds[0]["pretrain"]["learning_curve"])]
    for s in seeds:
        lines.append(f"| {s['seed']} | " + " | ".join(f"{p['passkey']:.0f} / {p['kv']:.0f} ({p['cpu_seconds']:.0f} s)" for p in s["pretrain"]["learning_curve"]) + " |")
    lines += ["", "(pass key / key–value)", ""]
    spread = " Cells: mean over seeds (min–max)." if len(seeds) > 1 else ""
    header = "| row | arm | " + " | ".join(f"{m}× ({format_length(m * native)})" for m in multiples) + " |"
    rule = "|---|---|" + "---|" * len(multiples)
    for task, title, digits in (("lab-passkey", "Pass key (accuracy %)", 0), ("lab-kv", "Key–value retrieval (accuracy %)", 0), ("ppl", "Perplexity (last 64 tokens, Paradise Lost)", 2)):
        if task not in results["tasks"]:
            continue
        lines += [f"## {title}", "", f"n = {results['runs'][0]['results'][task][str(native)]['n']} items per cell in all.{spread}", "", header, rule]
        for run in results["runs"]:
            cells = [_format(run["results"][task].get(str(m * native)), digits=digits) for m in multiples]
            lines.append(f"| {run['label']} | {ARMS[info['arms'][run['label']]]} | " + " | ".join(cells) + " |")
        lines.append("")
        extra = [("far", f"Beyond the window (needle at least {native} tokens before the answer):")]
        if task == "lab-kv":
            extra.insert(0, ("middle_third", "Middle third (gold pair at depth 1/3–2/3):"))
        for key, caption in extra if task != "ppl" else []:
            lines += [caption, "", header, rule]
            for run in results["runs"]:
                cells = [_format(run["results"][task].get(str(m * native)), key=key) for m in multiples]
                lines.append(f"| {run['label']} | {ARMS[info['arms'][run['label']]]} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## Claims", "", "| group | claim | source | verdict | evidence |", "|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['group']} | {c['claim']} | {c['source']} | **{c['verdict']}** | {c['evidence']} |")
    lines += ["", "Verdicts: accuracies compare the seed-pooled difference with two binomial standard errors (±) and need most "
              f"seeds to agree; perplexities need every seed to differ by more than {PPL_TOLERANCE:.0%} the same way. A ≥ claim "
              "holds as a tie unless the row is clearly behind; a > claim within the noise is 'not resolved'.", "",
              "Plots and per-task tables: `report.md` / `report.html` (seed means); each `seed-<k>/` has its own report.", ""]
    return "\n".join(lines)
