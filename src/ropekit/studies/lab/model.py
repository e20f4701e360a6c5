"""The lab model and its training: :class:`Shape` (a small Llama with RoPE) and :func:`lab_model`, and
:func:`train_lab`, which trains it on :class:`~ropekit.studies.lab.data.LabSequences` through ropekit's training
components on the transformers ``Trainer`` (:class:`Schedule` for the optimisation, :func:`answer_weighted_loss` for
the loss, :func:`stack_rows` for the batches, :class:`LearningCurve` for the in-window accuracy while pre-training).

Used for the pre-training and for every trained row of :mod:`ropekit.studies.lab.rows` alike.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from .data import ANSWER, BOS, EOS, PAD, VOCABULARY, LabSequences, Mix
from .tasks import run_lab_kv, run_lab_passkey


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


# The deeper lab model (issue: "EABF's layer rule becomes testable"): 4 layers, so the paper's rule (layers 0–1
# unscaled, the logit scale in layers 2–3) differs from scaling all layers and from ABF. Narrower (hidden 96, 3 heads
# of head_dim 32 — the 2-layer model's head_dim, so RoPE's spectrum and θ's choice carry over) at about the 2-layer
# model's cost: 4·(4·96² + 3·96·384) = 590K weights in the blocks against 2·(4·128² + 3·128·512) = 524K (×1.13).
DEEP = Shape(hidden=96, layers=4, heads=3, intermediate=384)


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
    from ...training.trainer import collate

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

    from ...training.positions import check_params, get_strategy
    from ...training.trainer import EpochCallback, LossLog, RopekitTrainer, TrainingSet

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
