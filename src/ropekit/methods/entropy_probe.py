"""Attention entropy of a model's own forward pass, per layer, head and query position; and the choice of layers
it supports (``layers=entropy`` for the logit-scale methods).

Definition (Zhang et al. 2024, arXiv 2401.07004, §3 and Fig. 1): for layer l, head h and query position i,
H = −Σ_j p_ij ln p_ij in nats over the keys query i may see, from the attention the model actually uses (post-RoPE,
after any logit scale, softcap and masks). The reference is the uniform distribution, ln(n_i), with n_i the number
of visible keys. Only the probed query rows are computed, in row chunks, inside the model's own forward (through
:func:`ropekit.attention.observe`), so no attention matrix is materialised and any backend works. Entropies come
from log-softmax, so p·ln p is exact for tiny p.

**Which layers to leave unscaled.** The EABF paper leaves layers 0–1 unscaled because, in the unmodified model
inside its window, their entropy rises steadily with length, close to uniform, while the other layers stay almost
length-invariant; the logit scale exists to keep the latter that way past the window. :func:`layer_profile` measures
this on the unextended model with one forward of ``min(native, 8192)`` tokens of natural text: for query positions in
the late half of the first ¼, ½ and 1× of that window it records each layer's mean entropy H and the uniform's
ln n. A layer *behaves like layers 0–1* when both hold:

* near uniform: H / ln n ≥ :data:`UNIFORM_LIKE` (0.6) in the full window's late half — the attention-entropy
  probe's existing threshold; and
* rising: across the three windows, H grows with ln n at a slope ≥ :data:`RISING` (0.5) — a uniform layer's
  slope is 1, a length-invariant layer's is 0; 0.5 is halfway.

Both thresholds are checked against SmolLM2-135M's measured profile in docs/methods.md.
"""

from __future__ import annotations

import hashlib
import json
import math

import torch

from .runtime import observe, visible_keys
from ..corpus import text_tokens
from ..embedded import cache_dir

UNIFORM_LIKE = 0.6  # late-position entropy as a fraction of uniform above which a layer is "near uniform"
RISING = 0.5  # slope of entropy against ln(n) across window sizes above which a layer's entropy "rises with length"
PROBE_CAP = 8192  # the probe's window: the model's native length, at most this many tokens (bounded cost)
PROBE_FRACTIONS = (0.25, 0.5, 1.0)  # window sizes compared, as fractions of the probe window
PROBE_QUERIES = 128  # probed query rows


def probe_rows(length: int, count: int) -> torch.Tensor:
    """``count`` query positions in [0, length): half log-spaced (early detail), half evenly spaced."""
    log = torch.logspace(0, math.log10(max(length - 1, 1)), count // 2)
    lin = torch.linspace(0, length - 1, count - count // 2)
    return torch.unique(torch.cat([log, lin]).round().long().clamp(0, length - 1))


def row_entropy(query: torch.Tensor, key: torch.Tensor, rows: torch.Tensor, scaling: float, attention_mask=None,
                softcap: float | None = None, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy (nats) and visible-key count for query ``rows``.

    query ``[B, H, Sq, D]``; key ``[B, Hkv, Skv, D]`` (GQA expanded here); rows ``[R]`` indices into Sq;
    attention_mask ``None`` (causal), bool or additive ``[B, 1, Sq, Skv]``, or a 2D padding mask ``[B, Skv]``.
    Returns H ``[B, H, R]`` and n ``[B, 1, R]``.
    """
    batch, heads, q_len, _ = query.shape
    kv_len = key.shape[2]
    key = key.repeat_interleave(heads // key.shape[1], dim=1).float()
    entropies, counts = [], []
    for start in range(0, rows.numel(), chunk):
        idx = rows[start:start + chunk].to(query.device)
        logits = torch.matmul(query[:, :, idx].float(), key.transpose(2, 3)) * scaling  # [B, H, r, Skv]
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        visible = (torch.arange(kv_len, device=query.device)[None, :] <= (idx[:, None] + kv_len - q_len))[None, None]
        masked = visible_keys(attention_mask, idx)
        if masked is not None:
            visible = visible & masked
        logits = logits.masked_fill(~visible, float("-inf"))
        logp = torch.log_softmax(logits, dim=-1)
        entropies.append(-(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1))
        counts.append(visible.sum(-1).float())
    return torch.cat(entropies, dim=-1), torch.cat(counts, dim=-1)


@torch.no_grad()
def document_entropy(model, ids: list[int], rows: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over ``ids``; returns H ``[layers, heads, R]`` and n ``[R]`` for the probed rows.
    (Callers reset a dynamic-NTK model's RoPE state first: :func:`ropekit.extension.reset_rope_state`.)"""
    per_layer: dict[int, torch.Tensor] = {}
    visible: list[torch.Tensor] = []

    def callback(module, query, key, attention_mask, scaling, softcap, position_ids):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        h, n = row_entropy(query, key, rows, scale, attention_mask, softcap, chunk)
        per_layer[module.layer_idx] = h[0].cpu()
        if not visible:
            visible.append(n[0, 0].cpu())

    device = next(model.parameters()).device
    with observe(callback):
        model(input_ids=torch.tensor([ids], device=device), use_cache=False, logits_to_keep=1)
    return torch.stack([per_layer[i] for i in sorted(per_layer)]), visible[0]


def layer_profile(model, ids: list[int], fractions=PROBE_FRACTIONS, queries: int = PROBE_QUERIES) -> dict:
    """Per layer, the mean entropy of the late half of windows of ``fractions`` × len(ids) tokens, from one forward
    over ``ids`` (positions i < n see exactly what a forward over the first n tokens would give them)."""
    length = len(ids)
    rows = probe_rows(length, queries)
    entropy, visible = document_entropy(model, ids, rows)
    by_layer = entropy.mean(1)  # [layers, R]
    windows = []
    for fraction in fractions:
        end = max(2, round(fraction * length))
        late = (rows >= end // 2) & (rows < end)
        windows.append({"tokens": end, "uniform": float(torch.log(visible[late]).mean()),
                        "entropy": [round(float(x), 4) for x in by_layer[:, late].mean(-1)]})
    return {"length": length, "queries": int(rows.numel()), "windows": windows}


def unscaled_layers(profile: dict, uniform_like: float = UNIFORM_LIKE, rising: float = RISING) -> dict:
    """Apply the rule of the module docstring to a :func:`layer_profile`: per layer its normalised late entropy in the
    full window and its slope against ln n; ``unscaled`` lists the layers that behave like EABF's layers 0–1."""
    windows = profile["windows"]
    xs = torch.tensor([w["uniform"] for w in windows], dtype=torch.float64)
    layers = len(windows[0]["entropy"])
    level, slope = [], []
    for layer in range(layers):
        ys = torch.tensor([w["entropy"][layer] for w in windows], dtype=torch.float64)
        level.append(float(ys[-1] / xs[-1]))
        centred = xs - xs.mean()
        slope.append(float((centred * (ys - ys.mean())).sum() / (centred**2).sum()))
    unscaled = [i for i in range(layers) if level[i] >= uniform_like and slope[i] >= rising]
    return {"unscaled": unscaled, "level": [round(x, 4) for x in level], "slope": [round(x, 4) for x in slope],
            "uniform_like": uniform_like, "rising": rising}


def model_fingerprint(model) -> str:
    """A short hash of a model's configuration and weights (sums of every parameter), to cache probe results."""
    config = model.config.to_dict()
    config.pop("ropekit", None)
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            total, norm = float(param.sum(dtype=torch.float64)), float(torch.linalg.vector_norm(param, dtype=torch.float64))
            digest.update(f"{name}{tuple(param.shape)}{total:.10e}{norm:.10e}".encode())
    return digest.hexdigest()[:16]


def choose_unscaled_layers(model, tokenizer, native_length: int, source: str = "paradise_lost") -> dict:
    """Probe the (unextended) ``model`` on ``min(native_length, PROBE_CAP)`` tokens of ``source`` and apply
    :func:`unscaled_layers`; the result (with the profile it came from) is cached under the ropekit cache directory,
    keyed by the model's fingerprint, so the probe runs once per model."""
    length = min(int(native_length), PROBE_CAP)
    key = hashlib.sha1(f"{model_fingerprint(model)}|{length}|{source}|{UNIFORM_LIKE}|{RISING}|{PROBE_QUERIES}".encode()).hexdigest()[:20]
    path = cache_dir() / "entropy-probe" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    ids = text_tokens(tokenizer, source, min_tokens=length)[:length]
    profile = layer_profile(model, ids)
    choice = {**unscaled_layers(profile), "source": source, "profile": profile}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(choice))
    tmp.replace(path)
    return choice
