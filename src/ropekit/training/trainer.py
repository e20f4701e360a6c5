"""Fine-tuning components the training run assembles: the training dataset with position strategies, the collators,
the transformers ``Trainer`` subclass and the callbacks (epochs, loss log, deadline).

The run that uses them, top to bottom, is :func:`ropekit.training.stage.train_stage`. Training runs on the
transformers ``Trainer`` (so accelerate, DeepSpeed, FSDP, mixed precision and checkpoint/resume come from there) with
peft for LoRA.
"""

from __future__ import annotations

import json
import time

import torch
from transformers import Trainer, TrainerCallback

from .data import IGNORE, Example
from ..errors import RopekitError
from .positions import get_strategy, sample, sample_generator, sentence_end_offsets


class TrainingSet(torch.utils.data.Dataset):
    """Examples → model inputs of at most ``train_length`` tokens.

    ``contiguous``: rows are documents (or packed rows) with their own position ids. Other strategies draw fresh
    position ids for every example in every epoch (``set_epoch``), from a generator seeded by
    (seed, epoch, index), and gather the matching tokens and labels from the document.
    """

    def __init__(self, rows: list, strategy: str, train_length: int, target_length: int, seed: int = 0, params: dict | None = None,
                 sentence_ends: frozenset[int] | None = None):
        get_strategy(strategy)
        self.rows, self.strategy, self.train_length, self.target_length = rows, strategy, train_length, target_length
        self.seed, self.params, self.epoch = seed, params or {}, 0
        self.end_offsets = None
        if strategy == "longrecipe":  # the strategy sees offsets as `doc`, so it gets each row's sentence-end offsets
            if sentence_ends is None:
                raise RopekitError("TrainingSet with the longrecipe strategy needs the tokenizer's sentence-end ids",
                                   "pass sentence_ends=ropekit.positions.sentence_end_ids(tokenizer)")
            by_row = {}
            for i, row in enumerate(rows):
                if id(row) not in by_row:
                    by_row[id(row)] = check_sentence_row(row, i, sentence_ends, train_length)
            self.end_offsets = [by_row[id(row)] for row in rows]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        if self.strategy == "contiguous":
            if isinstance(row, Example):
                ids, labels, positions = row.input_ids, row.labels, list(range(len(row)))
            else:
                ids, labels, positions = row
            n = self.train_length
            return {"input_ids": torch.tensor(ids[:n]), "labels": torch.tensor(labels[:n]), "position_ids": torch.tensor(positions[:n]),
                    "jumps": False}
        generator = sample_generator(self.seed, self.epoch, index)
        params = self.params if self.end_offsets is None else {**self.params, "sentence_ends": self.end_offsets[index]}
        offsets, positions = sample(self.strategy, torch.arange(len(row)), self.train_length, self.target_length, generator, **params)
        ids, labels = torch.tensor(row.input_ids)[offsets], torch.tensor(row.labels)[offsets]
        return {"input_ids": ids, "labels": labels, "position_ids": positions, "jumps": True}


def check_sentence_row(row, index: int, sentence_ends: frozenset[int], train_length: int) -> torch.Tensor:
    """A LongRecipe row's sentence-end offsets; a row shorter than the training length, or without a sentence end
    before its last trained token, stops the run before any step with one line naming it."""
    name = getattr(row, "where", None) or f"example {index}"
    if len(row) < train_length:
        raise RopekitError(f"{name}: {len(row)} tokens, shorter than the longrecipe training length {train_length}",
                           "make every row at least that long (ropekit data select fills rows to the budget) or lower --train-length")
    offsets = sentence_end_offsets(row.input_ids, sentence_ends)
    if not bool((offsets < train_length - 1).any()):
        raise RopekitError(f"{name}: no sentence end (a token ending in '.', '!', '?' or a newline) in its first {train_length} tokens, "
                           "so longrecipe has nowhere to put its gaps", "remove the row or split the text into sentences")
    return offsets


def collate_padded(rows: list[dict], multiple: int = 1) -> dict:
    """Stack rows right-padded to a common length that is a multiple of ``multiple``, with a 2D attention mask.

    Used under context parallelism (``multiple`` = 2 × cp size, as torch's load-balanced sharding needs): one
    document per row, no packing (CP supports causal masks only, so packed documents would see each other);
    ``position_ids`` travel with the tokens and are sharded with them by the Trainer.
    """
    length = max(r["input_ids"].numel() for r in rows)
    length = -(-length // multiple) * multiple
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    positions = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        n = r["input_ids"].numel()
        ids[i, :n], labels[i, :n], positions[i, :n], mask[i, :n] = r["input_ids"], r["labels"], r["position_ids"], 1
        positions[i, n:] = torch.arange(1, length - n + 1) + r["position_ids"][-1]  # pads continue the count (masked)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask, "use_cache": False}


def collate(rows: list[dict]) -> dict:
    """Batch rows for the model.

    Rows whose position ids jump (CREAM, PoSE, RandPos) all have the training length: they are stacked and given an
    all-ones ``attention_mask``, which stops transformers from mistaking the jumps for document boundaries.
    Contiguous rows are flattened into one row whose position ids restart at every row (and every packed
    document): transformers then builds a block-diagonal causal mask (varlen for flash attention), so rows never
    attend to each other and no padding is computed.
    """
    if rows[0]["jumps"]:
        ids = torch.stack([r["input_ids"] for r in rows])
        return {"input_ids": ids, "labels": torch.stack([r["labels"] for r in rows]),
                "position_ids": torch.stack([r["position_ids"] for r in rows]), "attention_mask": torch.ones_like(ids),
                "use_cache": False}
    labels = []
    for r in rows:
        row_labels = r["labels"].clone()
        row_labels[0] = IGNORE  # would be predicted from the previous row's last token
        labels.append(row_labels)
    return {"input_ids": torch.cat([r["input_ids"] for r in rows])[None], "labels": torch.cat(labels)[None],
            "position_ids": torch.cat([r["position_ids"] for r in rows])[None], "use_cache": False}


class RopekitTrainer(Trainer):
    """The transformers Trainer, with saved activations optionally kept in CPU memory during each forward,
    LongLoRA's S²-Attn (``s2``: :class:`~ropekit.methods.s2_attention.S2Training` settings) open during each training
    step, and an optional in-window distillation term towards the starting model (``distill``:
    :class:`~ropekit.training.distill.Distill`)."""

    def __init__(self, *args, offload_activations: bool = False, s2: dict | None = None, distill=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.offload_activations = offload_activations
        self.s2 = s2
        self.distill = distill

    def training_step(self, model, inputs, num_items_in_batch=None):
        # forward and backward: gradient checkpointing re-runs the forward inside the backward
        if not self.s2:
            return super().training_step(model, inputs, num_items_in_batch)
        from ..methods.s2_attention import s2_training

        with s2_training(model, **self.s2):
            return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from .memory import ActivationOffload

        with ActivationOffload(self.offload_activations):
            if self.distill is None:
                return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            inputs = {**inputs, "output_hidden_states": True}
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            term = self.distill.term(model, inputs, outputs)
        # the task loss may already be a share of the accumulated batch (normalised by its item count); the term is a
        # per-micro-batch mean, so it takes its share here — where the Trainer divides the whole loss, it does so itself
        scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        if scaled and model.training:
            term = term / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        self.distill.last = float(term.detach())
        loss = loss + term
        return (loss, outputs) if return_outputs else loss


class EpochCallback(TrainerCallback):
    """Tells the dataset which epoch starts (also on resume), so positions are fresh per epoch and reproducible."""

    def __init__(self, dataset: TrainingSet):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch + 1e-6))


class LossLog(TrainerCallback):
    """Appends one JSON line per logged step to ``path``: step, epoch, loss, learning rate, tokens/s."""

    def __init__(self, path):
        self.path = path
        self.last_time, self.last_tokens = None, 0
        self.rows: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_time, self.last_tokens = time.time(), state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        now = time.time()
        tokens = state.num_input_tokens_seen
        speed = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_tokens = now, tokens
        row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "loss": logs["loss"],
               "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"), "tokens_seen": tokens,
               "tokens_per_second": round(speed, 1)}
        self.rows.append(row)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")


class StopAt(TrainerCallback):
    """Starts no optimizer step that would end after ``stop_at`` (a ``time.time()`` value): after each step, if one
    more step (as long as the slowest so far, plus 10%) would cross it, training stops and the run is saved as it is.
    ``stopped`` then holds the step it stopped after; the summary reports it, so a cut run is never taken for a whole one."""

    def __init__(self, stop_at: float, clock=time.time):
        self.stop_at, self.clock = stop_at, clock
        self.step_started = None
        self.slowest = 0.0
        self.stopped: int | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = self.clock()
        if self.step_started > self.stop_at and self.stopped is None:  # already past it (e.g. before the first step)
            control.should_training_stop = True
            self.stopped = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        if self.step_started is not None:
            self.slowest = max(self.slowest, now - self.step_started)
        if now + 1.1 * self.slowest > self.stop_at and state.global_step < state.max_steps:
            control.should_training_stop = True
            self.stopped = state.global_step
