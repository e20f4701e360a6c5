"""Memory-saving training components for long sequences, exact and backend-independent (pure PyTorch).

* :func:`chunked_causal_lm_loss` — the causal-LM loss from the final hidden states, computed in row chunks under
  activation checkpointing, so the ``[tokens, vocab]`` logits never exist at once (at 256K tokens and a 128K vocab
  that tensor alone is 128 GiB in fp32). Rows without a label (prompts in response-only SFT) skip the output layer
  entirely. Equal to transformers' loss (tested). Where ``liger-kernel`` is installed on a GPU, its fused
  linear-cross-entropy does the same job in Triton (``--liger``).
* :func:`tile_mlp` — the MLP of every decoder layer runs over the sequence in tiles, each under activation
  checkpointing, so its ``[tokens, intermediate]`` activations exist for one tile at a time (the tiled MLP of
  DeepSpeed's ALST, Bekman et al. 2025, arXiv 2506.13996). Token-wise, so exact. Installed the way accelerate installs
  its hooks (an instance-level ``forward``), so parameter names and checkpoints are unchanged; :func:`untile_mlp`
  removes it.
* :class:`ActivationOffload` — saved activations (with gradient checkpointing: each layer's input) go to pinned
  CPU memory during the forward and come back for the backward (``torch.autograd.graph.save_on_cpu``).
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def _ce_sum(hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor, softcap) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_causal_lm_loss(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, num_items_in_batch=None,
                           chunk: int = 4096, softcap: float | None = None) -> torch.Tensor:
    """Next-token cross-entropy from final hidden states ``[B, S, D]`` and ``labels`` ``[B, S]`` (−100 = no loss).

    Same convention as transformers' causal-LM loss: position t predicts ``labels[t+1]``; the sum is divided by
    ``num_items_in_batch`` when given (gradient accumulation / several devices), else by the number of labels.
    """
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    rows = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    keep = targets != IGNORE
    rows, targets = rows[keep], targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk):
        part = slice(start, start + chunk)
        if torch.is_grad_enabled():
            total = total + checkpoint(_ce_sum, rows[part], head.weight, head.bias, targets[part], softcap, use_reentrant=False)
        else:
            total = total + _ce_sum(rows[part], head.weight, head.bias, targets[part], softcap)
    divisor = num_items_in_batch if num_items_in_batch is not None else max(int(keep.sum()), 1)
    if isinstance(divisor, torch.Tensor):
        divisor = divisor.to(total.device)
    return total / divisor


def make_chunked_loss(model, chunk: int = 4096):
    """A ``compute_loss_func`` for the transformers Trainer: reads ``outputs.hidden_states[-1]`` (the final, normed
    hidden states; the batch asks for them with ``logits_to_keep=1`` so full logits are never computed)."""
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)

    def compute_loss(outputs, labels, num_items_in_batch=None):
        return chunked_causal_lm_loss(outputs.hidden_states[-1], head, labels, num_items_in_batch, chunk, softcap)

    return compute_loss


def _mlps(model):
    for name, module in model.named_modules():
        if name.endswith(".mlp") and isinstance(module, torch.nn.Module) and hasattr(module, "down_proj"):
            yield module


def tile_mlp(model, tile: int = 8192) -> int:
    """Run each decoder MLP over ``tile``-token slices of the sequence (checkpointed when training); returns how
    many MLPs were tiled."""
    count = 0
    for mlp in _mlps(model):
        original = type(mlp).forward

        def tiled(self, x, _original=original):
            if x.dim() != 3 or x.shape[1] <= tile:
                return _original(self, x)
            parts = []
            for piece in x.split(tile, dim=1):
                if torch.is_grad_enabled():
                    parts.append(checkpoint(_original, self, piece, use_reentrant=False))
                else:
                    parts.append(_original(self, piece))
            return torch.cat(parts, dim=1)

        mlp.forward = types.MethodType(tiled, mlp)
        mlp._ropekit_tiled = tile
        count += 1
    return count


def untile_mlp(model) -> None:
    for mlp in _mlps(model):
        if getattr(mlp, "_ropekit_tiled", None):
            del mlp.forward
            del mlp._ropekit_tiled


class ActivationOffload(contextlib.AbstractContextManager):
    """Keep tensors saved for backward in (pinned) CPU memory instead of on the GPU."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._context = None

    def __enter__(self):
        if self.enabled:
            self._context = torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
            self._context.__enter__()
        return self

    def __exit__(self, *exc):
        if self._context is not None:
            self._context.__exit__(*exc)
            self._context = None
        return False


def training_flops_per_token(config, sequence_length: int, trainable_fraction: float = 1.0) -> float:
    """Model FLOPs per trained token (forward + backward), the usual MFU convention: 6·N for the matrices plus
    6·layers·S·d for causal attention (12·layers·S·d·½), N excluding the input embedding. With LoRA the weight
    gradients of frozen matrices are skipped: 2·N forward + 2·N input gradients + 2·N·fraction weight gradients."""
    d = config.hidden_size
    layers = config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or d // heads
    inter = config.intermediate_size
    per_layer = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2 + 3 * d * inter
    matrices = layers * per_layer + d * config.vocab_size
    dense = (4.0 + 2.0 * trainable_fraction) * matrices
    attention = 6.0 * layers * sequence_length * heads * head_dim
    return dense + attention


