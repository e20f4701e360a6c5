"""RoPE scaling between transformers' ``rope_parameters`` and the GGUF keys llama.cpp reads — both directions.

Conventions of llama.cpp (llama-cpp-python 0.3.36's vendored llama.cpp; file names below are in that tree):

* ``<arch>.rope.freq_base`` = θ; ``<arch>.context_length`` = the window the model is meant for (our target);
  ``<arch>.rope.scaling.type`` ∈ {none, linear, yarn, longrope}; ``…scaling.factor`` = s (llama.cpp uses 1/s as its
  ``freq_scale``); ``…scaling.original_context_length`` = YaRN's native window.
* YaRN's ramp (``ggml_rope_yarn_corr_dims``, ggml/src/ggml.c) floors/ceils the correction range: transformers'
  ``truncate=True``. ``truncate=False`` cannot be written.
* YaRN's attention factor: the rope kernel (ggml/src/ggml-cpu/ops.cpp, ``rope_yarn``) multiplies cos/sin by
  ``mscale · (1 + 0.1·ln s)``, and src/llama-context.cpp sets ``mscale = rope.scaling.attn_factor`` for YaRN (it
  overwrites ``yarn_attn_factor`` with ``get_mscale(s)`` and divides that back out). So transformers'
  ``attention_factor = A`` is written as ``rope.scaling.attn_factor = A / (1 + 0.1·ln s)`` (omitted for the default
  A = 0.1·ln s + 1); writing A itself would apply 1 + 0.1·ln s twice. Reading inverts the same formula.
* Llama 3 rescaling has no scaling type: a ``rope_freqs.weight`` tensor holds one divisor per frequency
  (conversion/llama.py, ``generate_extra_tensors``). Reading it back, ropekit expresses those divisors exactly as
  transformers' ``longrope`` type with identical short and long factors and attention factor 1.
* LongRoPE is refused: llama.cpp picks the long or short factors by the configured context size
  (src/llama-model.cpp), transformers by each input's length — the same file would run differently.
"""

from __future__ import annotations

import math

from ..errors import RopekitError

YARN_DEFAULT_BETA_FAST, YARN_DEFAULT_BETA_SLOW = 32.0, 1.0


def llama3_divisors(rope: dict, rotary_dim: int) -> list[float]:
    """Per-frequency divisors of Llama 3.1 rescaling (transformers' ``_compute_llama3_parameters``, as divisors)."""
    base, factor = float(rope["rope_theta"]), float(rope["factor"])
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old = float(rope["original_max_position_embeddings"])
    divisors = []
    for i in range(0, rotary_dim, 2):
        wavelen = 2 * math.pi * base ** (i / rotary_dim)
        if wavelen < old / high:
            divisors.append(1.0)
        elif wavelen > old / low:
            divisors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            divisors.append(1.0 / ((1 - smooth) / factor + smooth))
    return divisors


def rope_to_gguf(rope: dict, rotary_dim: int) -> tuple[dict, list[float] | None]:
    """``(keys, rope_freqs)``: the ``rope.*`` keys (without the ``<arch>.`` prefix) and an optional divisor tensor.

    Raises one line naming what would be lost for a RoPE that llama.cpp cannot run exactly.
    """
    rope_type = rope.get("rope_type", "default")
    keys: dict = {"rope.freq_base": float(rope["rope_theta"])}
    if rope.get("partial_rotary_factor", 1.0) not in (None, 1.0):
        raise RopekitError("partial rotary embeddings are not written to GGUF by ropekit", "export a model that rotates every head dimension")
    if rope_type == "default":
        return keys, None
    if rope_type == "linear":
        keys.update({"rope.scaling.type": "linear", "rope.scaling.factor": float(rope["factor"])})
        return keys, None
    if rope_type == "yarn":
        s = float(rope["factor"])
        if rope.get("truncate", True) is False:
            raise RopekitError("yarn with truncate=false cannot be run by llama.cpp (its YaRN ramp always rounds the correction range)",
                               "extend with the default truncate=true")
        if rope.get("mscale") or rope.get("mscale_all_dim"):
            raise RopekitError("yarn with mscale/mscale_all_dim is not written by ropekit", "use the default attention factor")
        keys.update({"rope.scaling.type": "yarn", "rope.scaling.factor": s,
                     "rope.scaling.original_context_length": int(rope["original_max_position_embeddings"]),
                     "rope.scaling.yarn_beta_fast": float(rope.get("beta_fast", YARN_DEFAULT_BETA_FAST)),
                     "rope.scaling.yarn_beta_slow": float(rope.get("beta_slow", YARN_DEFAULT_BETA_SLOW))})
        if rope.get("attention_factor") is not None:
            keys["rope.scaling.attn_factor"] = float(rope["attention_factor"]) / (1.0 + 0.1 * math.log(s))
        return keys, None
    if rope_type == "llama3":
        return keys, llama3_divisors(rope, rotary_dim)
    if rope_type == "dynamic":
        raise RopekitError("dynamic NTK cannot be expressed in GGUF: llama.cpp has no length-dependent RoPE base, so the model would "
                           "run with the native base at every length", "export ntk, yarn, linear or abf instead")
    if rope_type == "longrope":
        raise RopekitError("LongRoPE cannot be run exactly by llama.cpp: it picks long or short factors by the configured context "
                           "size, transformers by each input's length", "export yarn, linear, llama3 or abf instead")
    raise RopekitError(f"rope type {rope_type!r} cannot be written to GGUF", "export a linear, yarn, llama3, ntk or abf model")


def rope_from_gguf(keys: dict, rope_freqs: list[float] | None, context_length: int) -> dict:
    """transformers ``rope_parameters`` for the ``rope.*`` keys (without ``<arch>.``) of a GGUF file, or a refusal."""
    theta = float(keys.get("rope.freq_base", 10000.0))
    scaling = str(keys.get("rope.scaling.type", "none"))
    factor = float(keys.get("rope.scaling.factor", 1.0) or 1.0)
    if rope_freqs is not None:
        if scaling not in ("none", "") or factor != 1.0:
            raise RopekitError(f"this GGUF combines rope_freqs with rope scaling type {scaling!r}", "ropekit loads one of the two, not both")
        # per-frequency divisors → transformers' longrope with identical short/long factors: length-independent, exact
        return {"rope_type": "longrope", "rope_theta": theta, "short_factor": list(rope_freqs), "long_factor": list(rope_freqs),
                "attention_factor": 1.0, "original_max_position_embeddings": int(context_length), "factor": 1.0}
    if scaling in ("none", "") or factor == 1.0:
        return {"rope_type": "default", "rope_theta": theta}
    if scaling == "linear":
        return {"rope_type": "linear", "rope_theta": theta, "factor": factor}
    if scaling == "yarn":
        if float(keys.get("rope.scaling.yarn_ext_factor", 1.0)) not in (1.0, -1.0):
            raise RopekitError("this GGUF sets a YaRN extrapolation factor other than 1, which transformers cannot express",
                               "load it in llama.cpp")
        if float(keys.get("rope.scaling.yarn_log_mul", 0.0)) != 0.0:
            raise RopekitError("this GGUF uses YaRN's log multiplier (mscale_all_dim), which ropekit does not map", "load it in llama.cpp")
        rope = {"rope_type": "yarn", "rope_theta": theta, "factor": factor,
                "original_max_position_embeddings": int(keys.get("rope.scaling.original_context_length") or round(context_length / factor)),
                "beta_fast": float(keys.get("rope.scaling.yarn_beta_fast", YARN_DEFAULT_BETA_FAST)),
                "beta_slow": float(keys.get("rope.scaling.yarn_beta_slow", YARN_DEFAULT_BETA_SLOW))}
        attn = float(keys.get("rope.scaling.attn_factor", 1.0))
        if attn != 1.0:  # llama.cpp runs mscale = attn_factor · (1 + 0.1 ln s)
            rope["attention_factor"] = attn * (1.0 + 0.1 * math.log(factor))
        return rope
    raise RopekitError(f"this GGUF uses rope scaling type {scaling!r}, which ropekit cannot load exactly",
                       "load it in llama.cpp, or use a GGUF with none, linear or yarn scaling")


def read_gguf_rope(path) -> dict:
    """``{"arch", "context_length", "rope_parameters", "record"}`` from a GGUF file's keys (memory-mapped, no tensor
    data read except a ``rope_freqs`` tensor)."""
    import json

    import gguf

    reader = gguf.GGUFReader(str(path))
    values = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("tokenizer.")}
    arch = str(values.get("general.architecture", ""))
    prefix = f"{arch}."
    keys = {key[len(prefix):]: value for key, value in values.items() if key.startswith(prefix + "rope.")}
    context = int(values.get(prefix + "context_length", 0) or 0)
    freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    rope_freqs = [float(x) for x in freqs.data.reshape(-1)] if freqs is not None else None
    record = values.get("ropekit.record")
    return {"arch": arch, "context_length": context, "rope_parameters": rope_from_gguf(keys, rope_freqs, context),
            "record": json.loads(record) if record else None}
