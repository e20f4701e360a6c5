"""The training entry point: :func:`train` runs one fine-tuning run, or LongRecipe's stages (extend → replay →
merge) when the recipe is ``longrecipe``. This is ``ropekit.train`` (the old module path stays an alias of this one).

    from ropekit.train import TrainOptions, train
    summary = train(TrainOptions(model="smollm2-135m", method="eabf", target_length="32k", output="run"))
"""

from __future__ import annotations

from .longrecipe import train_longrecipe
from .stage import TrainOptions, apply_lora, close_process_group, is_main_process, prepare_rows, train_stage

__all__ = ["TrainOptions", "apply_lora", "close_process_group", "is_main_process", "prepare_rows", "train", "train_stage"]


def train(options: TrainOptions, callbacks: list | None = None) -> dict:
    """Extend ``options.model`` with ``options.method``, fine-tune it, save it in ``options.output``; returns the
    run's summary. ``callbacks``: extra transformers ``TrainerCallback`` objects (e.g. for your own logging)."""
    if options.recipe == "longrecipe":
        return train_longrecipe(options, callbacks)
    return train_stage(options, callbacks)
