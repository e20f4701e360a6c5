"""ropekit: extend the context window of RoPE-based Hugging Face causal LMs, train them, and prove it works.

Public API::

    import ropekit
    model, tokenizer = ropekit.load_model("smollm2-135m")      # or a directory, a .gguf file, a hub id
    ropekit.extend(model, "eabf", target_length="32k")          # or "yarn", "yarn+logscale", "self_extend", ...
    ropekit.list_methods()                                      # every method, its parameters and defaults
    ropekit.s2_attention(q, k, v, group_size)                   # LongLoRA's shifted sparse attention (training)
"""

from . import _moved
from .version import __version__

_moved.install()  # old module paths (ropekit.train, ropekit.attention, …) keep working

from . import methods as _methods  # noqa: E402,F401  (registers every method)
from .errors import RopekitError  # noqa: E402
from .extension import describe, extend, restore  # noqa: E402
from .lengths import parse_length  # noqa: E402
from .methods.s2_attention import s2_attention  # noqa: E402
from .models import load_model, save_model  # noqa: E402
from .training.positions import position_ids  # noqa: E402
from .registry import describe_methods as list_methods  # noqa: E402

__all__ = ["RopekitError", "describe", "extend", "list_methods", "load_model", "parse_length", "position_ids", "restore", "s2_attention", "save_model", "__version__"]
