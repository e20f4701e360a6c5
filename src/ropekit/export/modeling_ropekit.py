"""Modeling code bundled into ropekit checkpoints whose extension has an attention side.

ropekit copies this one file, unchanged, next to ``config.json`` of every checkpoint whose method changes attention
(the entropy-aware logit scale: ``eabf``, ``logscale``, ``…+logscale``; ``self_extend``) or whose RoPE is dynamic
NTK. ``config.json`` then names a model type that only this file registers (``ropekit_llama``, …) and points
transformers' documented custom-code mechanism (``auto_map``) at the classes below, so

* ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` runs the model exactly as ropekit does,
  without ropekit installed, and
* plain ``from_pretrained(dir)`` refuses (transformers asks for ``trust_remote_code=True``) instead of silently
  running a different model.

What this file may do, so it can be reviewed in a minute: it imports only ``math``, ``torch`` and ``transformers``;
it reads no file, touches no network and runs no subprocess (ropekit's tests check this by inspecting the syntax
tree). The classes are the stock transformers classes with a new ``model_type``; the weights load unchanged.

Run time, through transformers' public ``AttentionInterface``: a pass-through wrapper is registered under each
attention backend's own name; it reads the plan stored in ``config.ropekit["attention"]``, exactly as ropekit's own
``ropekit.methods.runtime`` does, and models without a plan run unchanged. If ropekit is (or later gets) imported in the
same process, ropekit's wrapper is the one that runs (the markers ``_ropekit_wrapped`` / ``_ropekit_bundled`` make
sure exactly one wrapper applies a plan, so nothing is applied twice).

* Entropy-aware logit scale (Zhang et al. 2024, arXiv 2401.07004): the post-RoPE query row of position ``p`` is
  multiplied by ``t = max(1, ln(p+1)/ln c)`` (fp32). Query ``[B, H, S, D]``, position_ids ``[B or 1, S]``.
* Self-Extend (Jin et al. 2024, arXiv 2401.01325): keys within ``window`` keep their true distance, farther keys
  use grouped positions (``p // G`` for keys, ``p // G + W - W/G`` for queries), by rotating the already-rotated
  q/k by the position difference; computed blockwise over queries.
* Dynamic NTK: before every forward the rotary embedding is rebuilt from the config, so each forward's frequencies
  depend on that forward's positions only (transformers alone keeps the scaling of earlier, longer inputs).
"""

import math

import torch
from transformers import (
    AttentionInterface,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gemma import modeling_gemma
from transformers.models.gemma2 import modeling_gemma2
from transformers.models.gemma3 import modeling_gemma3
from transformers.models.llama import modeling_llama
from transformers.models.mistral import modeling_mistral
from transformers.models.phi3 import modeling_phi3
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen3 import modeling_qwen3

RECORD_FORMAT = 1  # the newest ropekit record format this file understands
KNOWN_PLANS = ("logit_scale", "self_extend")


class RopekitCodeError(ValueError):
    """Raised for a checkpoint this file cannot run exactly (one line: the problem and the fix)."""


# ----------------------------------------------------------------------------------------------------------------------
# The math (the same as ropekit.methods.runtime; ropekit's tests compare the two numerically)


def logit_scale(position_ids, scale_length):
    """t = max(1, ln(p+1)/ln c) in fp32, same shape as ``position_ids``."""
    return torch.clamp(torch.log1p(position_ids.float()) / math.log(scale_length), min=1.0)


def scale_query(query, position_ids, scale_length):
    t = logit_scale(position_ids, scale_length)[:, None, :, None]
    if query.dtype == torch.float32:
        return query * t
    return (query.float() * t).to(query.dtype)


def default_inv_freq(theta, rotary_dim, device):
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float, device=device) / rotary_dim))


def rotate_by(x, delta, inv_freq):
    """Rotate already-RoPE'd vectors x ``[B, H, S, D]`` by ``delta`` ``[B, S]`` more positions (rotate-half layout)."""
    d = inv_freq.numel() * 2
    freqs = delta.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    cos, sin = emb.cos(), emb.sin()
    rot, rest = x[..., :d].float(), x[..., d:]
    half = d // 2
    rotated = rot * cos + torch.cat((-rot[..., half:], rot[..., :half]), dim=-1) * sin
    return torch.cat((rotated.to(x.dtype), rest), dim=-1)


def visible_keys(attention_mask, q_index):
    if attention_mask is None:
        return None
    if attention_mask.dim() == 4:
        m = attention_mask[:, :, q_index]
        return m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
    if attention_mask.dim() == 2:
        return attention_mask[:, None, None, :].bool()
    raise RopekitCodeError(f"self_extend got an attention mask of shape {tuple(attention_mask.shape)}; "
                           "load the model with attn_implementation='sdpa' or 'eager'")


def one_sequence_per_row(positions):
    steps = positions[:, 1:] - positions[:, :-1]
    for row, row_steps in zip(positions, steps):
        breaks = torch.nonzero(row_steps != 1)
        if breaks.numel():
            prefix = row[: int(breaks[-1]) + 1]
            if not bool((prefix == prefix[0]).all()):
                return False
    return True


def self_extend_attention(module, query, key, value, attention_mask, plan, scaling=None, dropout=0.0, softcap=None,
                          position_ids=None, **_):
    """Self-Extend attention; returns ``([B, S, H, D], None)`` like every transformers attention function."""
    if position_ids is None:
        raise RopekitCodeError("self_extend needs position_ids in the attention call; use a supported architecture")
    if not isinstance(attention_mask, (torch.Tensor, type(None))):
        raise RopekitCodeError("self_extend does not support flex_attention block masks; load with attn_implementation='sdpa'")
    batch, heads, q_len, head_dim = query.shape
    kv_len = key.shape[2]
    scaling = scaling if scaling is not None else head_dim ** -0.5
    q_pos = position_ids.expand(batch, q_len).to(query.device)
    if q_len > 1 and not one_sequence_per_row(q_pos):
        raise RopekitCodeError("self_extend needs contiguous positions per row (no packed sequences); run one sequence per row")
    k_pos = torch.arange(kv_len, device=query.device)[None, :] - (kv_len - 1) + q_pos[:, -1:]
    group, window = plan["group"], plan["window"]
    inv_freq = default_inv_freq(plan["rope_theta"], plan["rotary_dim"], query.device)
    q_group = rotate_by(query, (torch.div(q_pos, group, rounding_mode="floor") + (window - window / group)) - q_pos, inv_freq)
    k_group = rotate_by(key, torch.div(k_pos, group, rounding_mode="floor") - k_pos, inv_freq)

    n_rep = heads // key.shape[1]
    key, k_group, value = (x.repeat_interleave(n_rep, dim=1) if n_rep > 1 else x for x in (key, k_group, value))
    out = torch.empty(batch, heads, q_len, value.shape[-1], dtype=value.dtype, device=value.device)
    block = max(1, min(q_len, (1 << 26) // max(1, batch * heads * kv_len)))
    causal_offset = kv_len - q_len
    for start in range(0, q_len, block):
        idx = slice(start, min(start + block, q_len))
        near = torch.matmul(query[:, :, idx].float(), key.float().transpose(2, 3))
        far = torch.matmul(q_group[:, :, idx].float(), k_group.float().transpose(2, 3))
        distance = q_pos[:, idx, None] - k_pos[:, None, :]
        logits = torch.where((distance < window)[:, None], near, far) * scaling
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        allowed = visible_keys(attention_mask, idx)
        q_index = torch.arange(idx.start, idx.stop, device=query.device)
        causal = torch.arange(kv_len, device=query.device)[None, :] <= (q_index[:, None] + causal_offset)
        allowed = causal[None, None] if allowed is None else allowed & causal[None, None]
        logits = logits.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
        if dropout and module.training:
            probs = torch.nn.functional.dropout(probs, p=dropout)
        out[:, :, idx] = torch.matmul(probs.to(value.dtype), value)
    return out.transpose(1, 2).contiguous(), None


# ----------------------------------------------------------------------------------------------------------------------
# Dispatch through AttentionInterface

EAGER = {m.__name__: m.eager_attention_forward for m in (modeling_llama, modeling_mistral, modeling_qwen2, modeling_qwen3,
                                                         modeling_gemma, modeling_gemma2, modeling_gemma3, modeling_phi3)}
WRAPPED_BACKENDS = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4")


def apply_plan(inner, module, query, key, value, attention_mask, **kwargs):
    record = getattr(module.config, "ropekit", None)
    plan = record.get("attention") if isinstance(record, dict) else None
    if not plan:
        return inner(module, query, key, value, attention_mask, **kwargs)
    layer = getattr(module, "layer_idx", None)
    scale = plan.get("logit_scale")
    if scale and layer in scale["layers"]:
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            raise RopekitCodeError(f"{type(module).__name__} did not pass position_ids to its attention function")
        query = scale_query(query, position_ids.to(query.device), scale["scale_length"])
    extend = plan.get("self_extend")
    if extend and layer in extend["layers"]:
        return self_extend_attention(module, query, key, value, attention_mask, extend, **kwargs)
    return inner(module, query, key, value, attention_mask, **kwargs)


def wrap_backend(backend):
    """Register a pass-through wrapper under ``backend`` unless ropekit's (or this file's) wrapper is already there."""
    current = ALL_ATTENTION_FUNCTIONS._global_mapping.get(backend)
    if getattr(current, "_ropekit_wrapped", False) or getattr(current, "_ropekit_bundled", False):
        return
    if backend != "eager" and current is None:
        return

    def attention(module, query, key, value, attention_mask, **kwargs):
        inner = current if current is not None else EAGER.get(type(module).__module__, modeling_llama.eager_attention_forward)
        return apply_plan(inner, module, query, key, value, attention_mask, **kwargs)

    attention.__name__ = f"ropekit_bundled_{backend}_attention"
    attention._ropekit_bundled = True
    attention._ropekit_inner = current  # ropekit wraps this instead if it is imported later
    AttentionInterface.register(backend, attention)


def rebuild_dynamic_rope(model, args=None):
    """Forward pre-hook: give a dynamic-NTK model fresh rotary embeddings, so frequencies follow this forward only."""
    for name, module in list(model.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "config"):
            buffers = list(module.buffers())
            fresh = type(module)(module.config)
            if buffers:
                fresh = fresh.to(buffers[0].device)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, fresh)


def is_dynamic(config):
    rope = getattr(config, "rope_parameters", None) or {}
    entries = [rope] if "rope_type" in rope else [v for v in rope.values() if isinstance(v, dict)]
    return any(entry.get("rope_type") == "dynamic" for entry in entries)


class RopekitModelMixin:
    """Checks the checkpoint's record, installs the attention wrappers and, for dynamic NTK, the per-forward reset."""

    def __init__(self, config, *args, **kwargs):
        record = getattr(config, "ropekit", None)
        if not isinstance(record, dict):
            raise RopekitCodeError("this config has no ropekit record; load the checkpoint ropekit wrote, unchanged")
        if record.get("format", 0) > RECORD_FORMAT:
            raise RopekitCodeError(f"this checkpoint's ropekit record has format {record.get('format')}, newer than this "
                                   f"code's {RECORD_FORMAT}; load it with an up-to-date ropekit (ropekit.load_model)")
        unknown = sorted(set(record.get("attention") or {}) - set(KNOWN_PLANS))
        if unknown:
            raise RopekitCodeError(f"this checkpoint's attention plan uses {', '.join(unknown)}, which the bundled code does "
                                   "not implement; load it with ropekit.load_model")
        super().__init__(config, *args, **kwargs)
        for backend in WRAPPED_BACKENDS:
            wrap_backend(backend)
        backend = self.config._attn_implementation
        if record.get("attention") and backend not in WRAPPED_BACKENDS:  # e.g. a serving engine's own attention
            raise RopekitCodeError(f"attention implementation {backend!r} would run without this checkpoint's "
                                   f"{', '.join(sorted(record['attention']))}; use one of {', '.join(WRAPPED_BACKENDS)}")
        if is_dynamic(config):
            self.register_forward_pre_hook(rebuild_dynamic_rope)


# One config and one model class per architecture ropekit supports: the stock classes under a model type that only
# this file registers (so loading without trust_remote_code fails instead of silently dropping the attention side).


class RopekitLlamaConfig(LlamaConfig):
    model_type = "ropekit_llama"


class RopekitLlamaForCausalLM(RopekitModelMixin, LlamaForCausalLM):
    config_class = RopekitLlamaConfig


class RopekitMistralConfig(MistralConfig):
    model_type = "ropekit_mistral"


class RopekitMistralForCausalLM(RopekitModelMixin, MistralForCausalLM):
    config_class = RopekitMistralConfig


class RopekitQwen2Config(Qwen2Config):
    model_type = "ropekit_qwen2"


class RopekitQwen2ForCausalLM(RopekitModelMixin, Qwen2ForCausalLM):
    config_class = RopekitQwen2Config


class RopekitQwen3Config(Qwen3Config):
    model_type = "ropekit_qwen3"


class RopekitQwen3ForCausalLM(RopekitModelMixin, Qwen3ForCausalLM):
    config_class = RopekitQwen3Config


class RopekitGemmaConfig(GemmaConfig):
    model_type = "ropekit_gemma"


class RopekitGemmaForCausalLM(RopekitModelMixin, GemmaForCausalLM):
    config_class = RopekitGemmaConfig


class RopekitGemma2Config(Gemma2Config):
    model_type = "ropekit_gemma2"


class RopekitGemma2ForCausalLM(RopekitModelMixin, Gemma2ForCausalLM):
    config_class = RopekitGemma2Config


class RopekitGemma3TextConfig(Gemma3TextConfig):
    model_type = "ropekit_gemma3_text"


class RopekitGemma3ForCausalLM(RopekitModelMixin, Gemma3ForCausalLM):
    config_class = RopekitGemma3TextConfig


class RopekitPhi3Config(Phi3Config):
    model_type = "ropekit_phi3"


class RopekitPhi3ForCausalLM(RopekitModelMixin, Phi3ForCausalLM):
    config_class = RopekitPhi3Config


# base model type → (config class, model class) named in config.json's auto_map
CLASSES = {
    "llama": (RopekitLlamaConfig, RopekitLlamaForCausalLM),
    "mistral": (RopekitMistralConfig, RopekitMistralForCausalLM),
    "qwen2": (RopekitQwen2Config, RopekitQwen2ForCausalLM),
    "qwen3": (RopekitQwen3Config, RopekitQwen3ForCausalLM),
    "gemma": (RopekitGemmaConfig, RopekitGemmaForCausalLM),
    "gemma2": (RopekitGemma2Config, RopekitGemma2ForCausalLM),
    "gemma3_text": (RopekitGemma3TextConfig, RopekitGemma3ForCausalLM),
    "phi3": (RopekitPhi3Config, RopekitPhi3ForCausalLM),
}
