"""LongRecipe (Hu et al. 2024, arXiv 2409.00509; zhiyuanhubj/LongRecipe@bcc7692): extend a model to a target length
while training on samples of 30% of it, then replay general data and merge with the original.

The recipe, top to bottom (:func:`train_longrecipe`, which ``ropekit train --recipe longrecipe`` runs), under one
output directory ``OUT``:

0. **Data.** ``--data`` rows as given (run ``ropekit data select`` first for the paper's token selection); without
   it, the reference code's digit rule over the offline Shakespeare plays (``ropekit.training.selection``), saved as
   ``OUT/stage0_data.jsonl``.
1. ``OUT/stage0`` — **extension** (recipe ``longrecipe-extend``): rows of 0.3 × target tokens with ``longrecipe``
   positions (sentence-gapped ids spanning the whole target) under the frequency method; by default ``abf`` with
   θ from the paper's "Dynamic NTK" setting (:func:`longrecipe_theta`).
2. ``OUT/stage1`` — **replay** (recipe ``longrecipe-replay``): continue from stage 0 at the native length on
   ``--replay-data`` (default: the synthetic conversations, loss on responses), contiguous positions, one tenth of
   the learning rate, as many tokens as the paper's 68M replay vs 240M extension tokens (×68/240) by default.
3. ``OUT`` — **merge**: ``w·stage1 + (1 − w)·original`` (w = 0.5, the paper's Eq. 7), with stage 1's config (the
   extended RoPE), streamed by :func:`ropekit.training.merge.merge`.

``--resume`` skips every stage whose ``training_summary.json`` exists, resumes an interrupted one from its last
``checkpoint-*``, and starts a stage that never saved one afresh.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from ..errors import RopekitError
from ..lengths import parse_length

BUDGET_FRACTION = 0.3  # the paper's 30% of the target per sample
REPLAY_TOKEN_RATIO = 68 / 240  # the paper's replay (68M tokens) over its extension stage (240M tokens), App. A
REPLAY_LR_FACTOR = 0.1  # stage 1's learning rate: 5e-6 after 5e-5
STAGES = ("stage0", "stage1")


def longrecipe_theta(theta: float, rotary_dim: int, factor: float) -> float:
    """The RoPE base of the paper's "RoPE scaling (Dynamic NTK)" entries (App. A Tab. 4), frozen for training.

    The table's values are what transformers' dynamic-NTK rule, ``θ·(s·L'/L − (s − 1))^(d/(d−2))``, gives at the
    target length L' = s·L: θ·(s² − s + 1)^(d/(d−2)). Llama-3 (θ 5e5, d 128): s = 10 → 48.9M, s = 16 → 131.5M;
    Qwen2 (θ 1e6): s = 4 → 13.5M — the three numbers printed there (tests/test_longrecipe.py checks them).
    """
    return float(theta * (factor * factor - factor + 1) ** (rotary_dim / (rotary_dim - 2)))


def default_method(model_dir: Path, target: int) -> tuple[str, dict]:
    """``("abf", {"theta": θ'})`` for the base model in ``model_dir`` at ``target`` (see :func:`longrecipe_theta`)."""
    from transformers import AutoConfig

    from ..extension import native_length_of, rope_entry, rotary_dim, text_config

    config = text_config(AutoConfig.from_pretrained(model_dir))
    rope, _ = rope_entry(config)
    native = native_length_of(config)
    if target <= native:
        raise RopekitError(f"target length {target} is not beyond the model's native length {native}",
                           f"choose a target above {native} tokens (e.g. {4 * native})")
    return "abf", {"theta": longrecipe_theta(float(rope["rope_theta"]), rotary_dim(config, rope), target / native)}


def _finished(directory: Path) -> bool:
    return (directory / "training_summary.json").is_file()


def _has_weights(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def _prepare_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Fresh: OUT must be empty (or --overwrite: our stage directories are cleared). Resume: a started run, whose
    finished stages still have their weights."""
    from .stage import is_main_process

    if resume:
        if not (out / "stage0").is_dir():
            raise RopekitError(f"--resume: {out} holds no LongRecipe stage (no stage0 directory)",
                               "start without --resume, or point --output at the interrupted run")
        for stage in STAGES:
            directory = out / stage
            if _finished(directory) and not _has_weights(directory):
                raise RopekitError(f"--resume: {directory} finished (training_summary.json) but its model checkpoint is missing",
                                   f"delete {directory} to train that stage again, or start without --resume")
        return
    if is_main_process() and out.exists() and any(out.iterdir()):  # other processes may already be writing
        if not overwrite:
            raise RopekitError(f"output directory {out} exists and is not empty",
                               "choose a new directory, pass --resume to continue it, or --overwrite")
        for stage in STAGES:
            shutil.rmtree(out / stage, ignore_errors=True)
        for name in ("stage0_data.jsonl", "training_summary.json"):
            (out / name).unlink(missing_ok=True)


def _stage(options, directory: Path, callbacks, **changes) -> dict:
    """Run one stage with ``train`` (resuming it when it saved a checkpoint) or read the summary of a finished one."""
    from .stage import is_main_process, train_stage

    if _finished(directory):
        return json.loads((directory / "training_summary.json").read_text())
    interrupted = options.resume and any(directory.glob("checkpoint-*"))
    if not interrupted and directory.exists() and is_main_process():
        shutil.rmtree(directory)  # a stage that never saved a checkpoint starts afresh (its log would be stale)
    return train_stage(replace(options, output=str(directory), resume=interrupted, overwrite=True, **changes), callbacks)


def stage0_data(options, out: Path, train_length: int, batch: int) -> str:
    """The stage-0 data: ``--data`` as given, else the digit rule over the offline Shakespeare plays (selected once,
    by the main process under ``accelerate launch``, the others waiting for the file)."""
    if options.data is not None:
        return options.data
    from .stage import is_main_process

    path = out / "stage0_data.jsonl"
    if is_main_process() and not path.is_file():
        from transformers import AutoTokenizer

        from .merge import checkpoint_dir
        from .selection import select

        rows = options.samples or (options.max_steps * batch if options.max_steps and options.max_steps > 0 else None)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir(options.model, "the base model"))
        partial = out / "stage0_data.jsonl.partial"
        out.mkdir(parents=True, exist_ok=True)
        _, report = select("shakespeare", tokenizer, train_length, rule="digits", p=0.5, rows=rows, seed=options.seed,
                           output=partial, progress=options.progress)
        partial.replace(path)
        (out / "stage0_data.report.json").write_text(json.dumps(report.__dict__, indent=2))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
    return str(path)


def train_longrecipe(options, callbacks: list | None = None) -> dict:
    """Run (or resume) the three stages; returns the summary also written to ``OUT/training_summary.json``.

    ``options`` is a :class:`ropekit.training.stage.TrainOptions` with ``recipe="longrecipe"``; its training fields apply to
    stage 0, ``replay_*`` to stage 1 and ``merge_weight`` to the merge.
    """
    from .merge import checkpoint_dir, merge
    from .stage import is_main_process
    from .recipes import get_recipe

    started = time.time()
    base_dir = checkpoint_dir(options.model, "the base model")  # merge needs safetensors: refuse GGUF/hub before training
    if not 0.0 <= options.merge_weight <= 1.0:
        raise RopekitError(f"merge weight {options.merge_weight} is outside [0, 1]", "pass --merge-weight between 0 and 1 (the paper uses 0.5)")
    target = parse_length(options.target_length, "target length")
    if options.train_length is not None:
        train_length = parse_length(options.train_length, "training length")
    else:
        train_length = round(BUDGET_FRACTION * target)
    if train_length > target:
        raise RopekitError(f"the per-sample budget {train_length} is longer than the target {target}",
                           "LongRecipe trains on a fraction of the target: pass --train-length below the target (default 30%)")
    out = Path(options.output).expanduser()
    _prepare_output(out, options.resume, options.overwrite)
    if options.resume and (out / "training_summary.json").is_file() and _has_weights(out):
        return json.loads((out / "training_summary.json").read_text())  # all three stages are done

    method, method_params = options.method, dict(options.method_params)
    if method is None:
        method, defaults = default_method(base_dir, target)
        method_params = {**defaults, **method_params} if not {"theta", "theta_factor"} & set(method_params) else method_params
    recipe = get_recipe("longrecipe-extend")
    batch = options.batch_size or recipe.batch_size
    data = stage0_data(options, out, train_length, batch)

    summary0 = _stage(options, out / "stage0", callbacks, recipe="longrecipe-extend", data=data, method=method,
                      method_params=method_params, strategy=options.strategy or "longrecipe", train_length=train_length)

    replay = get_recipe("longrecipe-replay")
    native = summary0["native_length"]
    replay_length = parse_length(options.replay_length, "replay length") if options.replay_length is not None else native
    lr = (options.learning_rate or recipe.learning_rate) * REPLAY_LR_FACTOR
    steps = options.replay_steps or max(1, math.ceil(REPLAY_TOKEN_RATIO * summary0["steps"] * summary0["train_length"] / replay_length))
    summary1 = _stage(options, out / "stage1", callbacks, recipe="longrecipe-replay", model=str(out / "stage0"), method=None,
                      method_params={}, data=options.replay_data, data_kind="auto", strategy="contiguous", strategy_params={},
                      train_length=replay_length, learning_rate=lr, max_steps=steps, schedule=None, warmup_steps=None, epochs=None,
                      samples=steps * batch if options.replay_data is None else None, min_tokens=None)

    summary = {"recipe": "longrecipe", "model": str(options.model), "method": summary0["method"], "target_length": target,
               "native_length": native, "train_length": train_length, "strategy": summary0["strategy"],
               "main_process": summary1.get("main_process", True)}
    if not is_main_process():
        return summary
    merged = merge(out / "stage1", base_dir, out, weight=options.merge_weight, overwrite=True, progress=options.progress)
    summary.update({
        "method_params": summary0["overrides"]["method_params"], "replay_length": replay_length,
        "replay_learning_rate": lr, "replay_steps": summary1["steps"], "merge_weight": options.merge_weight,
        "steps": summary0["steps"] + summary1["steps"], "final_loss": summary0["final_loss"], "replay_final_loss": summary1["final_loss"],
        "tokens_seen": summary0["tokens_seen"] + summary1["tokens_seen"], "data": summary0["data"], "replay_data": summary1["data"],
        "seconds": round(time.time() - started, 1),
        "stages": {"stage0": str(out / "stage0"), "stage1": str(out / "stage1"), "merge": merged},
    })
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
