"""Attention-entropy probe as an evaluation task (Zhang et al. 2024, arXiv 2401.07004, §3 and Fig. 1).

For each layer, head and probed query position i: H_i = −Σ_j p_ij ln p_ij in nats over the keys query i may see,
computed from the attention the model actually uses (:mod:`ropekit.methods.entropy_probe`: post-RoPE, after the logit scale,
softcap and masks, only the probed rows, never the full matrix). The reference is the uniform distribution,
ln(n_i) with n_i = the number of visible keys. Averaged over documents of natural text, curves are reported per
layer (mean over heads) and per head at late positions.

The spec's note on the reference script (``retrieve_attn.py``) applies: it re-softmaxes probabilities and keeps
only the last query and head 0; this probe does neither.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..corpus import text_tokens
from ..methods.entropy_probe import UNIFORM_LIKE, document_entropy, probe_rows
from ..extension import reset_rope_state
from .perplexity import window_offsets
from .tasks import Task, register


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
            reset_rope_state(model)
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
