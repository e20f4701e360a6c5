"""A ``ropekit`` model backend for lm-evaluation-harness: any lm-eval task on a ropekit checkpoint, or on a base model
extended on the fly, with the extension's runtime (logit scale, Self-Extend, per-forward dynamic NTK) in place.

CLI (registers the backend, then hands every argument to lm-eval's own CLI)::

    ropekit lm-eval --model ropekit --model_args pretrained=CKPT_DIR --tasks TASKS
    ropekit lm-eval --model ropekit --model_args pretrained=smollm2-135m,method=eabf,target_length=32k --tasks ...

Python::

    import lm_eval
    from ropekit.integrations.lm_eval import RopekitLM
    lm_eval.simple_evaluate(model=RopekitLM(pretrained="ckpt", method="yarn", target_length="32k"), tasks=[...])

The backend is lm-eval's own ``HFLM`` (same batching, tokenisation and request handling) around a model loaded by
``ropekit.load_model``. One difference, on purpose: its maximum length is the extended target (the checkpoint's
``target_length``, or ``target_length=`` given here), not ``max_position_embeddings``, which ``HFLM`` would read —
and dynamic NTK keeps ``max_position_embeddings`` at the native window, so ``HFLM`` would silently cut every longer
request from the left. lm-eval 0.4.13 loads no backends from entry points, hence the ``ropekit lm-eval`` wrapper.
"""

from __future__ import annotations

import inspect

from ..errors import RopekitError

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise RopekitError(f"the lm-eval integration needs lm-evaluation-harness ({err})", "pip install 'ropekit[lm-eval]'") from None

_HFLM_ARGS = set(inspect.signature(HFLM.__init__).parameters) - {"self", "pretrained", "tokenizer", "kwargs"}
_EXTEND_ARGS = {"native_length", "allow_untested"}


@register_model("ropekit")
class RopekitLM(HFLM):
    """lm-eval's HF backend around ``ropekit.load_model`` (+ ``ropekit.extend`` when ``method`` is given).

    Args:
        pretrained: checkpoint directory, ``.gguf`` file, hub id, or ``smollm2-135m``.
        method: extend on the fly with this method (e.g. ``eabf``, ``yarn+logscale``); None evaluates the checkpoint as it is.
        target_length: the window to extend to (``32k``); also the backend's maximum length.
        max_length: override the maximum length (default: the extension's target, else ``max_position_embeddings``).
        device, dtype, attn_implementation: as for ``ropekit.load_model`` (device default: cuda if available).
        Any other keyword that is not an ``HFLM`` argument is a method parameter (``beta_fast=32``, ``layers=all``).
    """

    def __init__(self, pretrained: str = "smollm2-135m", method: str | None = None, target_length: int | str | None = None,
                 device: str | None = "auto", dtype: str | None = "auto", attn_implementation: str | None = None,
                 max_length: int | None = None, **kwargs):
        import ropekit

        hflm_kwargs = {k: v for k, v in kwargs.items() if k in _HFLM_ARGS}
        extend_kwargs = {k: v for k, v in kwargs.items() if k in _EXTEND_ARGS}
        params = {k: v for k, v in kwargs.items() if k not in _HFLM_ARGS and k not in _EXTEND_ARGS}
        if params and not method:
            raise RopekitError(f"model_args {', '.join(sorted(params))} are neither lm-eval HF arguments nor usable without method=",
                               "pass method=NAME to extend on the fly, or drop them")
        for unsupported in ("parallelize", "peft", "delta", "gguf_file", "autogptq", "gptqmodel", "tp_plan"):
            if hflm_kwargs.get(unsupported):
                raise RopekitError(f"model_args {unsupported}= is not supported by the ropekit backend", "drop it, or use --model hf")
        model, tokenizer = ropekit.load_model(pretrained, device=device, dtype=dtype, attn_implementation=attn_implementation)
        if method:
            ropekit.extend(model, method, target_length=target_length, **extend_kwargs, **params)
        elif target_length is not None:
            raise RopekitError("target_length= without method= does nothing", "pass method=NAME, or max_length= to only raise the limit")
        if tokenizer is None:
            raise RopekitError(f"{pretrained} has no tokenizer files", "save the tokenizer with the checkpoint")
        record = getattr(model.config, "ropekit", None) or {}
        self.ropekit_record = record
        limit = max_length or record.get("target_length") or model.config.max_position_embeddings
        for ignored in ("device", "dtype", "max_length", "backend"):
            hflm_kwargs.pop(ignored, None)
        super().__init__(pretrained=model, tokenizer=tokenizer, backend="causal", max_length=int(limit), **hflm_kwargs)


def cli(args: list[str]) -> None:
    """``ropekit lm-eval ARGS``: lm-eval's CLI with the ``ropekit`` backend registered (``--model ropekit``)."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *args]
    cli_evaluate()
