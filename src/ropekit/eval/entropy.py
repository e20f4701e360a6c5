"""Attention-entropy probe (Zhang et al. 2024, arXiv 2401.07004, §3 and Fig. 1).

For each layer, head and probed query position i: H_i = −Σ_j p_ij ln p_ij in nats over the keys query i may see,
computed from the attention the model actually uses (post-RoPE, after the logit scale, softcap and masks). The
reference is the uniform distribution, ln(n_i) with n_i = the number of visible keys. Averaged over documents of
natural text, curves are reported per layer (mean over heads) and per head at late positions.

Never materialises the full attention matrix: only the probed query rows (default 128 per length, spread
log-linearly over positions) are computed, in row chunks, inside the model's own forward (through
:func:`ropekit.attention.observe`), so it works with SDPA or flash-attention models at any length.
Entropies come from log-softmax, so p·ln p is exact for tiny p (no clamping needed).

The spec's note on the reference script (``retrieve_attn.py``) applies: it re-softmaxes probabilities and keeps
only the last query and head 0; this probe does neither.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..attention import observe, visible_keys
from ..extension import reset_rope_state
from .corpus import text_tokens
from .perplexity import window_offsets
from .scoring import model_device
from .tasks import Task, register

UNIFORM_LIKE = 0.6  # normalised late-position entropy above which a layer "behaves like layers 0-1"


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
    """One forward over ``ids``; returns H ``[layers, heads, R]`` and n ``[R]`` for the probed rows."""
    per_layer: dict[int, torch.Tensor] = {}
    visible: list[torch.Tensor] = []

    def callback(module, query, key, attention_mask, scaling, softcap, position_ids):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        h, n = row_entropy(query, key, rows, scale, attention_mask, softcap, chunk)
        per_layer[module.layer_idx] = h[0].cpu()
        if not visible:
            visible.append(n[0, 0].cpu())

    reset_rope_state(model)
    with observe(callback):
        model(input_ids=torch.tensor([ids], device=model_device(model)), use_cache=False, logits_to_keep=1)
    return torch.stack([per_layer[i] for i in sorted(per_layer)]), visible[0]


def run_entropy(model, tokenizer, lengths, seed=0, progress=True, documents=2, queries=128, source="paradise_lost", chunk=64):
    """Per length: position-resolved entropy curves per layer, the uniform reference, and which layers are near-uniform."""
    tokens = text_tokens(tokenizer, source, min_tokens=max(lengths))
    out = {}
    bar = tqdm(total=len(lengths) * documents, desc="entropy", disable=not progress, leave=False)
    for length in lengths:
        rows = probe_rows(length, queries)
        offsets = window_offsets(len(tokens), length, documents)
        if len(offsets) < documents:  # a text shorter than the windows: shift by the seed instead
            offsets = [(seed * 7919 + k * 104_729) % max(1, len(tokens) - length) for k in range(documents)]
        total, visible = None, None
        for offset in offsets:
            h, n = document_entropy(model, tokens[offset:offset + length], rows, chunk)
            total = h if total is None else total + h
            visible = n
            bar.update(1)
        mean = total / len(offsets)  # [layers, heads, R]
        uniform = torch.log(visible)
        late = rows >= length // 2
        normalised = (mean[:, :, late] / uniform[late]).mean(-1)  # [layers, heads]
        per_layer = normalised.mean(-1)
        out[length] = {
            "score": 100.0 * float(per_layer.mean()),
            "n": len(offsets),
            "positions": rows.tolist(),
            "uniform": [round(float(x), 4) for x in uniform],
            "layers": [[round(float(x), 4) for x in layer] for layer in mean.mean(1)],
            "late_normalised_by_layer": [round(float(x), 4) for x in per_layer],
            "late_normalised_by_head": [[round(float(x), 4) for x in layer] for layer in normalised],
            "uniform_like_layers": [i for i, x in enumerate(per_layer.tolist()) if x >= UNIFORM_LIKE],
            "documents": offsets,
            "source": source,
        }
    bar.close()
    return out


register(Task("entropy", "attention entropy per layer/head/position on natural text vs the uniform ln n (chunked, never the full matrix)",
              "late-position entropy, % of uniform", False, run_entropy,
              {"documents": 2, "queries": 128, "source": "paradise_lost", "chunk": 64}, kind="probe"))
