"""Attention-side methods at run time, plugged in through transformers' public ``AttentionInterface``.

On import, ropekit registers a wrapper under each backend's own name (``sdpa``, ``eager``, ``flex_attention``,
``flash_attention_2/3/4``) — transformers' documented way to override an attention function. The wrapper reads the
plan stored in ``module.config.ropekit["attention"]``; a model without one runs the original function unchanged.
Keeping the names means every transformers code path that keys on them (mask construction, flash-attention varlen,
the Trainer's context-parallel checks) works as for a plain model. With the plan in the config, a checkpoint
behaves the same whether loaded with ``ropekit.load_model`` or with ``from_pretrained`` after ``import ropekit``.

* **Entropy-aware logit scale** (Zhang et al. 2024, arXiv 2401.07004, Eq. 3; reference code GAIR-NLP/Entropy-ABF
  ``apply_rotary_pos_emb_scale``). The post-RoPE query row of position ``p`` is multiplied by
  ``t = max(1, ln(p+1) / ln c)`` computed in fp32, so every logit of that row is multiplied by ``t``
  (``logit_ij = t_i · q_i·k_j / √d``). Only the query is scaled: keys stay unscaled in the KV cache, so cached
  decoding is exact. ``t`` comes from ``position_ids``, so left padding and packed sequences with position resets
  get the right factor. Shapes: query ``[B, H, S, D]``, position_ids ``[B or 1, S]``, t ``[B or 1, 1, S, 1]``.
* **Self-Extend** (Jin et al. 2024, arXiv 2401.01325; reference code datamllab/LongLM ``self_extend_patch``).
  Keys within ``window`` of the query keep their true relative position; farther keys use grouped positions
  ``p // G`` for keys and ``p // G + W - W/G`` for queries. RoPE composes (R(a)·R(b) = R(a+b)), so the grouped
  q/k are obtained by rotating the already-rotated q/k by the position difference; no second pass over the
  projections is needed. Computed blockwise over queries so the full attention matrix never materialises.
* **S²-Attn** (LongLoRA, :mod:`ropekit.longlora`), training only: while ``ropekit train --attention s2`` has its
  context open, layers of the trained model run shifted sparse attention on the (scaled) query. Not in the config.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Callable

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..errors import RopekitError
from .s2_attention import training_attention

# ----------------------------------------------------------------------------------------------------------------------
# The math


def logit_scale(position_ids: torch.Tensor, scale_length: int) -> torch.Tensor:
    """t = max(1, ln(p+1)/ln c) in fp32, same shape as ``position_ids``."""
    return torch.clamp(torch.log1p(position_ids.float()) / math.log(scale_length), min=1.0)


def _mul_in_fp32(query: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (query.float() * t).to(query.dtype)


_FUSED = {"fn": None, "failed": False}


def _fused_mul(query: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 on a GPU: one compiled kernel (read q, multiply in fp32, write q) instead of three passes."""
    if not _FUSED["failed"]:
        try:
            if _FUSED["fn"] is None:
                _FUSED["fn"] = torch.compile(_mul_in_fp32, dynamic=True, fullgraph=True)
            return _FUSED["fn"](query, t)
        except Exception:  # no compiler toolchain, unsupported device, …: the eager path is exact too
            _FUSED["failed"] = True
    return _mul_in_fp32(query, t)


def scale_query(query: torch.Tensor, position_ids: torch.Tensor, scale_length: int) -> torch.Tensor:
    """Multiply each query row by its t (computed in fp32). query ``[B, H, S, D]``; position_ids ``[B or 1, S]``."""
    t = logit_scale(position_ids, scale_length)[:, None, :, None]
    if query.dtype == torch.float32:
        return query * t
    if query.is_cuda and not torch.compiler.is_compiling():
        return _fused_mul(query, t)
    return _mul_in_fp32(query, t)


def default_inv_freq(theta: float, rotary_dim: int, device) -> torch.Tensor:
    """Plain RoPE frequencies θ^(-2i/d), i < d/2, as transformers' default rope type computes them."""
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float, device=device) / rotary_dim))


def rotate_by(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate already-RoPE'd vectors by ``delta`` more positions (rotate-half layout, partial rotary aware).

    x ``[B, H, S, D]``; delta ``[B, S]`` (float); inv_freq ``[d/2]`` with d ≤ D the rotary dimensions.
    """
    d = inv_freq.numel() * 2
    freqs = delta.float()[..., None] * inv_freq  # [B, S, d/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, S, d]
    cos, sin = emb.cos(), emb.sin()
    rot, rest = x[..., :d].float(), x[..., d:]
    half = d // 2
    rotated = rot * cos + torch.cat((-rot[..., half:], rot[..., :half]), dim=-1) * sin
    return torch.cat((rotated.to(x.dtype), rest), dim=-1)


def visible_keys(attention_mask, q_index) -> torch.Tensor | None:
    """The mask rows ``q_index`` (a slice or index tensor) as booleans ``[B, 1, q, kv]`` (True = may attend), or
    None when there is no mask (the plain causal case). Accepts 4D boolean or additive masks and 2D padding masks."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 4:
        m = attention_mask[:, :, q_index]
        return m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
    if attention_mask.dim() == 2:  # flash-style padding mask [B, kv]
        return attention_mask[:, None, None, :].bool()
    raise RopekitError(f"self_extend got an attention mask of shape {tuple(attention_mask.shape)}",
                       "use attn_implementation sdpa or eager with self_extend")


def _one_sequence_per_row(positions: torch.Tensor) -> bool:
    """True when each row counts up by one, after an optional left-padding prefix of one repeated position
    (transformers' ``generate`` gives pads position 1). Packed rows restart counting mid-row and fail."""
    steps = positions[:, 1:] - positions[:, :-1]
    for row, row_steps in zip(positions, steps):
        breaks = torch.nonzero(row_steps != 1)
        if breaks.numel():
            prefix = row[: int(breaks[-1]) + 1]
            if not bool((prefix == prefix[0]).all()):
                return False
    return True


def self_extend_attention(module, query, key, value, attention_mask, plan: dict, scaling: float | None = None,
                          dropout: float = 0.0, softcap: float | None = None, position_ids=None, **_) -> tuple[torch.Tensor, None]:
    """Self-Extend attention; returns ``([B, S, H, D], None)`` as every transformers attention function does."""
    if position_ids is None:
        raise RopekitError("self_extend needs position_ids in the attention call", "use a model architecture ropekit supports")
    if not isinstance(attention_mask, (torch.Tensor, type(None))):
        raise RopekitError("self_extend does not support flex_attention block masks", "load the model with attn_implementation='sdpa' or 'eager'")
    batch, heads, q_len, head_dim = query.shape
    kv_len = key.shape[2]
    scaling = scaling if scaling is not None else head_dim ** -0.5
    q_pos = position_ids.expand(batch, q_len).to(query.device)
    if q_len > 1 and not _one_sequence_per_row(q_pos):
        raise RopekitError("self_extend needs contiguous positions per row (no packed sequences)", "run one sequence per row")
    # Keys are the cache followed by the current tokens, so the last key sits at the last query's position.
    k_pos = torch.arange(kv_len, device=query.device)[None, :] - (kv_len - 1) + q_pos[:, -1:]
    group, window = plan["group"], plan["window"]
    inv_freq = default_inv_freq(plan["rope_theta"], plan["rotary_dim"], query.device)
    q_group = rotate_by(query, (torch.div(q_pos, group, rounding_mode="floor") + (window - window / group)) - q_pos, inv_freq)
    k_group = rotate_by(key, torch.div(k_pos, group, rounding_mode="floor") - k_pos, inv_freq)

    n_rep = heads // key.shape[1]
    key, k_group, value = (x.repeat_interleave(n_rep, dim=1) if n_rep > 1 else x for x in (key, k_group, value))
    out = torch.empty(batch, heads, q_len, value.shape[-1], dtype=value.dtype, device=value.device)
    block = max(1, min(q_len, (1 << 26) // max(1, batch * heads * kv_len)))  # ≈256 MiB of fp32 logits per block
    causal_offset = kv_len - q_len
    for start in range(0, q_len, block):
        idx = slice(start, min(start + block, q_len))
        near = torch.matmul(query[:, :, idx].float(), key.float().transpose(2, 3))
        far = torch.matmul(q_group[:, :, idx].float(), k_group.float().transpose(2, 3))
        distance = q_pos[:, idx, None] - k_pos[:, None, :]  # [B, q, kv]
        logits = torch.where((distance < window)[:, None], near, far) * scaling
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        allowed = visible_keys(attention_mask, idx)
        q_index = torch.arange(idx.start, idx.stop, device=query.device)
        causal = torch.arange(kv_len, device=query.device)[None, :] <= (q_index[:, None] + causal_offset)
        allowed = causal[None, None] if allowed is None else allowed & causal[None, None]
        logits = logits.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # fully masked (padding) rows → zeros
        if dropout and module.training:
            probs = torch.nn.functional.dropout(probs, p=dropout)
        out[:, :, idx] = torch.matmul(probs.to(value.dtype), value)
    return out.transpose(1, 2).contiguous(), None


# ----------------------------------------------------------------------------------------------------------------------
# Dispatch


def _eager_of(module) -> Callable:
    """The model's own eager attention (each modelling file defines ``eager_attention_forward``)."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn


_OBSERVERS: list[Callable] = []


@contextlib.contextmanager
def observe(callback: Callable):
    """Call ``callback(module, query, key, attention_mask, scaling, softcap, position_ids)`` in every attention layer
    while the context is open, with the query as the backend sees it (post-RoPE, logit scale applied) and the full
    key (cache included). Used by the attention-entropy probe; costs nothing when no observer is open."""
    _OBSERVERS.append(callback)
    try:
        yield
    finally:
        _OBSERVERS.remove(callback)


def _apply_plan(inner: Callable, module, query, key, value, attention_mask, **kwargs):
    plan = getattr(module.config, "ropekit", None)
    attention = plan.get("attention") if isinstance(plan, dict) else None
    layer = getattr(module, "layer_idx", None)
    scale = attention.get("logit_scale") if attention else None
    if scale and layer in scale["layers"]:
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            raise RopekitError(f"{type(module).__name__} did not pass position_ids to its attention function",
                               "the logit scale needs them; use a model architecture ropekit supports")
        query = scale_query(query, position_ids.to(query.device), scale["scale_length"])
    for callback in _OBSERVERS:
        callback(module, query, key, attention_mask, kwargs.get("scaling"), kwargs.get("softcap"), kwargs.get("position_ids"))
    s2 = training_attention(module)  # LongLoRA's S²-Attn: only inside the training step's context, after the scale
    if s2 is not None:
        return s2(inner, module, query, key, value, attention_mask, **kwargs)
    extend = attention.get("self_extend") if attention else None
    if extend and layer in extend["layers"]:
        return self_extend_attention(module, query, key, value, attention_mask, extend, **kwargs)
    return inner(module, query, key, value, attention_mask, **kwargs)


WRAPPED_BACKENDS = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4")


def _wrap(backend: str) -> None:
    """Register a pass-through wrapper under the backend's own name (transformers' documented way to override an
    attention function). Models whose config carries no ropekit attention plan run exactly as before."""
    current = ALL_ATTENTION_FUNCTIONS._global_mapping.get(backend)
    if getattr(current, "_ropekit_wrapped", False):
        return
    if getattr(current, "_ropekit_bundled", False):  # a checkpoint's bundled modeling_ropekit.py came first: replace it
        current = current._ropekit_inner
    if backend != "eager" and current is None:
        return  # not in this transformers version

    def attention(module, query, key, value, attention_mask, **kwargs):
        inner = _eager_of(module) if current is None else current
        return _apply_plan(inner, module, query, key, value, attention_mask, **kwargs)

    attention.__name__ = f"ropekit_{backend}_attention"
    attention._ropekit_wrapped = True
    AttentionInterface.register(backend, attention)


for _backend in WRAPPED_BACKENDS:
    _wrap(_backend)


def backend_of(config) -> str:
    """The model's attention backend (``sdpa``, ``eager``, ``flash_attention_2``, ``flex_attention``)."""
    return config._attn_implementation or "sdpa"


def install(model) -> None:
    """Check that the model's attention backend runs ropekit's attention plans (all wrapped backends do, as soon as
    ropekit is imported: the plan lives in ``config.ropekit``, so copies and reloads keep it)."""
    backend = backend_of(model.config)
    if backend not in WRAPPED_BACKENDS or not getattr(ALL_ATTENTION_FUNCTIONS.get(backend), "_ropekit_wrapped", False):
        raise RopekitError(f"attention backend {backend!r} is not supported by ropekit's attention-side methods",
                           "load the model with attn_implementation='sdpa', 'eager', 'flex_attention' or 'flash_attention_2'")
