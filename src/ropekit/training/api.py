"""The training entry point: :func:`train` runs one fine-tuning run, or LongRecipe's stages (extend → replay →
merge) when the recipe is ``longrecipe``, then checks that the trained model is still the model it started from
(:mod:`ropekit.eval.check`). This is ``ropekit.train`` (the old module path stays an alias of this one).

    from ropekit.train import TrainOptions, train
    summary = train(TrainOptions(model="smollm2-135m", method="eabf", target_length="32k", output="run"))
    summary["check"]["verdict"]   # "kept" or "regressed"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .longrecipe import train_longrecipe
from .recipes import get_recipe
from .stage import TrainOptions, apply_lora, close_process_group, is_main_process, prepare_rows, train_stage

__all__ = ["TrainOptions", "apply_lora", "close_process_group", "is_main_process", "prepare_rows", "train", "train_stage"]


def train(options: TrainOptions, callbacks: list | None = None) -> dict:
    """Extend ``options.model`` with ``options.method``, fine-tune it, save it in ``options.output``, check it
    against the starting model (``options.check``); returns the run's summary, with ``"check"`` when checked.
    ``callbacks``: extra transformers ``TrainerCallback`` objects (e.g. for your own logging)."""
    if options.recipe == "longrecipe":
        summary = train_longrecipe(options, callbacks)
    else:
        summary = train_stage(options, callbacks)
    if options.check and is_main_process():  # under FSDP / ZeRO-3 rank 0 checks the saved checkpoint
        _leave_zero3()
        summary["check"] = check_run(options, summary)
    return summary


def _leave_zero3() -> None:
    """Training under DeepSpeed ZeRO-3 leaves transformers' global ZeRO-3 switch on, and with it every later
    ``from_pretrained`` partitions its weights with collective calls; rank 0 checks alone, so those calls would wait
    for the other ranks forever. Training is over: turn the switch off (the next TrainingArguments sets it again)."""
    from transformers.integrations import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    if is_deepspeed_zero3_enabled():
        unset_hf_deepspeed_config()


def check_run(options: TrainOptions, summary: dict) -> dict:
    """The before/after check of a finished run: the input checkpoint (before extension) against the saved one, on
    the same items; printed, added to ``training_summary.json`` and to the checkpoint's ropekit record."""
    from ..eval.check import check_models, overlap, table_lines, training_text, warning_line

    out = Path(options.output).expanduser()
    recipe = get_recipe(options.recipe)
    default_source = "shakespeare"
    shared = overlap(options.check_text, training_text(options.data, default_source))
    check = check_models(options.model, out, lengths=list(options.check_lengths), text=options.check_text, device=options.device)
    check["overlap_with_training_text"] = shared
    lines = table_lines(check)
    if shared > 0:
        lines.append(f"warning: {100 * shared:.0f}% of sampled passages of the check text {options.check_text!r} are in the "
                     "training data, so its perplexity flatters the trained model. Fix: --check-text FILE with held-out text")
    warning = warning_line(check, recipe, options.learning_rate if options.learning_rate is not None else recipe.learning_rate)
    if warning:
        lines.append(f"WARNING: {warning}")
    for line in lines:
        print(f"ropekit: {line}", file=sys.stderr, flush=True)
    summary_path = out / "training_summary.json"
    if summary_path.exists():
        saved = json.loads(summary_path.read_text())
        saved["check"] = check
        summary_path.write_text(json.dumps(saved, indent=2, default=str))
    config_path = out / "config.json"
    if config_path.exists():  # the checkpoint's ropekit record carries the check (ropekit info shows it)
        config = json.loads(config_path.read_text())
        if isinstance(config.get("ropekit"), dict):
            config["ropekit"]["check"] = {k: check[k] for k in ("text", "rows", "regressions", "verdict")}
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return check
