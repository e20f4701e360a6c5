"""``ropekit.extend``: apply a registered method to a loaded transformers causal LM, in place.

Data flow: read the model's RoPE facts → build a :class:`~ropekit.registry.Plan` from the method(s) → write the new
``rope_parameters`` / ``max_position_embeddings`` into the config and rebuild the rotary-embedding modules (so
transformers' own ``ROPE_INIT_FUNCTIONS`` compute the frequencies) → record everything in ``config.ropekit`` →
route attention through :mod:`ropekit.methods.runtime` when the plan has an attention side.

The record in ``config.ropekit`` is plain JSON, saved by ``save_pretrained``. ``ropekit.load_model`` restores the
attention side from it; plain ``AutoModelForCausalLM.from_pretrained`` ignores it and still gets the frequencies.
"""

from __future__ import annotations

import copy

import torch

from .methods import runtime
from .version import __version__
from .methods.entropy_probe import choose_unscaled_layers
from .errors import RopekitError
from .lengths import parse_length
from .registry import Context, Plan, split_methods

# Architectures tested with a tiny random config in tests/test_architectures.py.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")
RECORD_FORMAT = 1


def text_config(model_or_config):
    config = getattr(model_or_config, "config", model_or_config)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def rope_entry(config) -> tuple[dict, str | None]:
    """The rope parameters that extension acts on, and the layer type they belong to (None for a flat dict).

    Models with one dict per layer type (Gemma 3: ``full_attention`` / ``sliding_attention``) are extended on their
    full-attention layers only; sliding-window layers never see beyond their window.
    """
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict) or not rope:
        raise RopekitError(f"model type {config.model_type!r} has no rotary position embedding (no rope_parameters in its config)",
                           f"ropekit extends RoPE models: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if "rope_type" in rope or "rope_theta" in rope:
        return rope, None
    if "full_attention" in rope and isinstance(rope["full_attention"], dict):
        return rope["full_attention"], "full_attention"
    raise RopekitError(f"cannot read the rope parameters of model type {config.model_type!r}: {sorted(rope)}",
                       "extend a model whose config has a flat rope_parameters dict or a full_attention entry")


def rotary_dim(config, rope: dict) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    partial = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    return int(head_dim * partial)


def sliding_layers(config) -> frozenset[int]:
    types = getattr(config, "layer_types", None) or []
    return frozenset(i for i, t in enumerate(types) if t == "sliding_attention")


def native_length_of(config) -> int:
    """The pre-trained window: recorded by an earlier extension, else the model's own setting."""
    record = getattr(config, "ropekit", None)
    if isinstance(record, dict) and "native_length" in record:
        return int(record["native_length"])
    rope, _ = rope_entry(config)
    return int(rope.get("original_max_position_embeddings") or config.max_position_embeddings)


def check_supported(model, allow_untested: bool = False) -> None:
    config = text_config(model)
    rope_entry(config)  # raises for models without RoPE
    if config.model_type not in SUPPORTED_MODEL_TYPES and not allow_untested:
        raise RopekitError(f"model type {config.model_type!r} is not supported (tested: {', '.join(SUPPORTED_MODEL_TYPES)})",
                           "pass allow_untested=True (CLI: --allow-untested) to try it anyway")
    if not any(_rotary_modules(model)):
        raise RopekitError(f"found no rotary-embedding module in {type(model).__name__}", "extend a transformers causal LM with RoPE")


def _rotary_modules(model):
    for name, module in model.named_modules():
        if type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "config"):
            yield name, module


def rebuild_rotary(model) -> None:
    """Re-create every rotary-embedding module from the (edited) config, on the device of the old one.

    Constructing the model's own rotary class is the public way to have transformers recompute ``inv_freq``
    (including dynamic/longrope bookkeeping such as ``original_inv_freq``) from new rope parameters.
    """
    for name, module in list(_rotary_modules(model)):
        buffers = list(module.buffers())
        device = buffers[0].device if buffers else torch.device("cpu")
        fresh = type(module)(module.config).to(device)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, fresh)


LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def rope_depends_on_length(model) -> bool:
    """True when RoPE frequencies change with the longest position of a forward (dynamic NTK, LongRoPE)."""
    rope = getattr(text_config(model), "rope_parameters", None) or {}
    entries = [rope] if "rope_type" in rope else [v for v in rope.values() if isinstance(v, dict)]
    return any(entry.get("rope_type") in LENGTH_DEPENDENT_ROPE for entry in entries)


def reset_rope_state(model) -> None:
    """Forget the scaling a dynamic-NTK model kept from earlier, longer forwards.

    transformers' dynamic rope only *grows* its frequencies and resets them only for a sequence shorter than the
    native window, so a 10K forward after a 12K one silently reuses the 12K scaling. Evaluators call this before
    every forward so each length is scored with its own frequencies. A no-op for static RoPE.
    """
    if rope_depends_on_length(model):
        rebuild_rotary(model)


def _rebuild_before_forward(model, args) -> None:
    rebuild_rotary(model)


def stateless_dynamic_rope(model) -> None:
    """Make dynamic NTK a function of each forward's own positions: rebuild the rotary embedding before every forward.

    Without this a model keeps transformers' state (see :func:`reset_rope_state`), and a checkpoint's output would
    depend on what ran before it. Within one ``generate`` call nothing changes: each step's longest position only grows.
    The bundled ``modeling_ropekit.py`` installs the same hook, so ``trust_remote_code`` loading matches.
    """
    rope = getattr(text_config(model), "rope_parameters", None) or {}
    entries = [rope] if "rope_type" in rope else [v for v in rope.values() if isinstance(v, dict)]
    if any(entry.get("rope_type") == "dynamic" for entry in entries) and not getattr(model, "_ropekit_stateless_rope", False):
        model.register_forward_pre_hook(_rebuild_before_forward)
        model._ropekit_stateless_rope = True


def _route_params(methods, params: dict) -> dict[str, dict]:
    """Give each method its parameters; every given parameter must belong to exactly one method."""
    routed = {m.name: {} for m in methods}
    for key, value in params.items():
        owner_name, _, name = key.rpartition(".") if "." in key else ("", "", key)
        owners = [m for m in methods if m.param(name) is not None and (not owner_name or m.name == owner_name)]
        if not owners:
            valid = sorted({f"{p.name}" for m in methods for p in m.params})
            names = "+".join(m.name for m in methods)
            raise RopekitError(f"unknown parameter {key!r} for method {names!r}",
                               f"valid parameters: {', '.join(valid) if valid else 'none'}")
        if len(owners) > 1:
            raise RopekitError(f"parameter {key!r} belongs to several methods ({', '.join(m.name for m in owners)})",
                               f"prefix it with the method, e.g. {owners[0].name}.{name}")
        owner = owners[0]
        routed[owner.name][name] = owner.param(name).parse(value, owner.name)
    for m in methods:
        for p in m.params:
            routed[m.name].setdefault(p.name, p.default)
    return routed


def _merge(plans: list[Plan]) -> Plan:
    merged = Plan()
    for plan in plans:
        if plan.rope_parameters is not None:
            merged.rope_parameters = plan.rope_parameters
        if plan.max_position_embeddings is not None and merged.max_position_embeddings is None:
            merged.max_position_embeddings = plan.max_position_embeddings
        merged.attention.update(plan.attention)
    return merged


def extend(model, method: str | list[str], target_length: int | str | None = None, *, native_length: int | str | None = None,
           allow_untested: bool = False, tokenizer=None, **params):
    """Extend ``model``'s context window with ``method``, in place, and return the model.

    Args:
        model: a transformers causal LM with RoPE (Llama, Mistral, Qwen2/3, Gemma 1/2/3, Phi-3 are tested).
        method: a registered method name (see :func:`ropekit.list_methods`), or several joined by ``+`` such as
            ``"yarn+logscale"`` (at most one frequency method).
        target_length: the context window to reach, e.g. ``32768`` or ``"32k"``. Required by the interpolation methods
            unless ``factor`` is given.
        native_length: override the pre-trained window (default: from the model's config).
        allow_untested: allow model types outside :data:`SUPPORTED_MODEL_TYPES`.
        tokenizer: the model's tokenizer, for ``layers="entropy"`` (which probes the model on natural text); default:
            loaded from the directory the model came from.
        **params: method parameters, e.g. ``beta_fast=32`` or ``layers="all"``; ``yarn.factor=4`` style names
            disambiguate combined methods.

    Raises:
        RopekitError: one line naming the problem and the fix, for every invalid input.
    """
    check_supported(model, allow_untested)
    methods = split_methods(method)
    config = text_config(model)
    record = getattr(config, "ropekit", None)
    if isinstance(record, dict) and record.get("method") not in (None, "none"):
        raise RopekitError(f"this model is already extended with {record['method']!r}",
                           "load the original model and extend that (ropekit does not stack extensions)")
    rope, layer_type = rope_entry(config)
    frequency_method = next((m for m in methods if m.side in ("frequency", "both")), None)
    if frequency_method is not None and rope.get("rope_type", "default") != "default":
        raise RopekitError(f"the model already uses rope_type {rope['rope_type']!r}; {frequency_method.name} replaces unscaled RoPE only",
                           "start from a model with rope_type 'default', or use an attention-side method (logscale, self_extend)")

    native = parse_length(native_length, "native length") if native_length is not None else native_length_of(config)
    target = parse_length(target_length, "target length") if target_length is not None else None
    if target is not None and target <= native and methods[0].name != "none":
        raise RopekitError(f"target length {target} is not beyond the model's native length {native}",
                           f"choose a target above {native} tokens (e.g. {4 * native})")
    ctx = Context(
        model_type=config.model_type,
        rope_parameters=dict(rope),
        rotary_dim=rotary_dim(config, rope),
        native_length=native,
        target_length=target,
        num_layers=config.num_hidden_layers,
        sliding_layers=sliding_layers(config),
        probe=lambda source: _probe_unscaled_layers(model, tokenizer, native, source),
    )
    routed = _route_params(methods, params)
    plans = [m.build(ctx, routed[m.name]) for m in methods]
    plan = _merge(plans)

    original = {"rope_parameters": copy.deepcopy(config.rope_parameters), "max_position_embeddings": config.max_position_embeddings}
    if plan.rope_parameters is not None:
        new_rope = copy.deepcopy(config.rope_parameters)
        if layer_type is None:
            new_rope = dict(plan.rope_parameters)
        else:
            new_rope[layer_type] = dict(plan.rope_parameters)
        config.rope_parameters = new_rope
    if plan.max_position_embeddings is not None:
        config.max_position_embeddings = int(plan.max_position_embeddings)
    config.ropekit = {
        "format": RECORD_FORMAT,
        "ropekit_version": __version__,
        "method": "+".join(m.name for m in methods),
        "params": {m.name: p.resolved for m, p in zip(methods, plans)},
        "native_length": native,
        "target_length": target,
        "original": original,
        "attention": plan.attention,
    }
    if plan.rope_parameters is not None:
        rebuild_rotary(model)
        stateless_dynamic_rope(model)
    if plan.attention:
        runtime.install(model)
    return model


def _probe_unscaled_layers(model, tokenizer, native: int, source: str) -> dict:
    """``layers=entropy``: measure the still-unextended model's attention entropy inside its window
    (:func:`ropekit.methods.entropy_probe.choose_unscaled_layers`, cached per model)."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
        except (OSError, ValueError, TypeError):
            raise RopekitError("layers=entropy probes the model on natural text and needs its tokenizer, which was not found "
                               f"next to the model ({model.name_or_path or 'no directory'})",
                               "pass tokenizer= to ropekit.extend, or give explicit layers") from None
    return choose_unscaled_layers(model, tokenizer, native, source)


def restore(model):
    """Re-activate a saved extension on a model loaded with plain ``from_pretrained`` (frequencies are already in
    the config; this routes attention through ropekit when the record has an attention side). Returns the model."""
    config = text_config(model)
    record = getattr(config, "ropekit", None)
    if not isinstance(record, dict):
        return model
    if record.get("format", 0) > RECORD_FORMAT:
        raise RopekitError(f"this checkpoint was written by a newer ropekit ({record.get('ropekit_version')})", "upgrade ropekit")
    if record.get("attention"):
        runtime.install(model)
    stateless_dynamic_rope(model)
    return model


def describe(model) -> dict:
    """What a model is: type, native and current window, RoPE parameters, attention backend, ropekit record."""
    config = text_config(model)
    rope, layer_type = rope_entry(config)
    record = getattr(config, "ropekit", None)
    return {
        "model_type": config.model_type,
        "architecture": type(model).__name__,
        "supported": config.model_type in SUPPORTED_MODEL_TYPES,
        "native_length": native_length_of(config),
        "max_position_embeddings": config.max_position_embeddings,
        "rope_parameters": config.rope_parameters,
        "extended_layer_type": layer_type,
        "rotary_dim": rotary_dim(config, rope),
        "num_layers": config.num_hidden_layers,
        "sliding_layers": sorted(sliding_layers(config)),
        "attention_backend": runtime.backend_of(config),
        "ropekit_attention": sorted((record or {}).get("attention") or {}),  # attention-side methods running in the wrapper
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "ropekit": record,
    }
