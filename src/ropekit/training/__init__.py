"""Fine-tuning: the run (:mod:`.api` → :mod:`.stage`, LongRecipe's stages in :mod:`.longrecipe`), its recipes
(:mod:`.recipes`), data (:mod:`.data`, :mod:`.synthetic`, :mod:`.selection`), position strategies
(:mod:`.positions`), the Trainer and callbacks (:mod:`.trainer`), memory savers (:mod:`.memory`), launch checks
(:mod:`.parallel`) and checkpoint merging (:mod:`.merge`).

Nothing is imported here eagerly (a training import costs seconds); names that the former ``ropekit.training``
module held are found on first use.
"""

from __future__ import annotations

import importlib

_OWNERS = {"recipes": ("Recipe", "RECIPES", "get_recipe"),
           "trainer": ("TrainingSet", "check_sentence_row", "collate", "collate_padded", "RopekitTrainer", "EpochCallback",
                       "LossLog", "StopAt")}


def __getattr__(name: str):
    for module, names in _OWNERS.items():
        if name in names:
            return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
