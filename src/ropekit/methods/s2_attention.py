"""LongLoRA's shifted sparse attention (S²-Attn), for training only.

Chen et al. 2024 (ICLR), "LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models", arXiv 2309.12307;
reference code dvlab-research/LongLoRA (``llama_attn_replace.py::forward_flashattn``, the varlen flash-attention
version). During fine-tuning, attention is computed causally inside groups of G tokens (G = a quarter of the
sequence by default): query heads ``[0, ⌊H/2⌋)`` use groups with borders ``0, G, 2G, …``; query heads
``[⌊H/2⌋, H)`` use borders ``0, s, s+G, s+2G, …`` with ``s = G // 2`` (half-size groups at both ends), so information
crosses the first half's borders. The trained model is then used with ordinary full attention.

Where ropekit differs from the reference (each tested in tests/test_longlora.py):

* Borders are computed per row and per packed segment from the row's own length, and cut off at its end (the
  reference uses batch-wide offsets: wrong groups with batch > 1 or padding). Padding is never attended; its
  outputs are 0 and get no gradient.
* Any length works: G = ⌈ratio · length⌉, so a segment has at most ⌈1/ratio⌉ unshifted groups, the last one
  shorter when the length is not a multiple of G (the reference raises unless length % G == 0).
* Odd head counts split as ⌊H/2⌋ unshifted / ⌈H/2⌉ shifted. Keys/values keep their own head count (grouped-query
  attention): query head h reads key/value head h // (H / H_kv), as in the model.
* Sequences (or packed segments) no longer than ``min_length`` use full attention (the community's suggestion in
  the reference's issue #58; ``ropekit train`` defaults it to the native window).

Computation: every group is an independent causal attention. On CPU (and on GPU without flash-attn) the groups are
gathered into contiguous 4-D ``[groups, heads, G, head_dim]`` tensors, one SDPA call per distinct group length
(5-D or strided views make SDPA fall back to its slow kernels). On a GPU with flash-attn installed, one
``flash_attn_varlen_func`` call per half of the heads, with the groups as ``cu_seqlens``.

Training integration: :class:`S2Training` is a context that ``ropekit train --attention s2`` opens around each
training step (forward and backward). While it is open, the attention runtime (:mod:`ropekit.methods.runtime`) hands
the model's attention layers to it after the logit scale, so S²-Attn composes with every method; the saved model uses
ordinary attention. It sits with the methods, not the training package, because the runtime calls it (imports point down).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import weakref
from fractions import Fraction

import torch
import torch.nn.functional as F

from ..errors import RopekitError

log = logging.getLogger("ropekit")

KERNELS = ("auto", "sdpa", "flash")

# Group borders (pure functions) ------------------------------------------------------------------------------------

def group_borders(length: int, group_size: int, shift: int = 0) -> list[int]:
    """Borders of causal groups over ``length`` tokens: ``[0, G, 2G, …, length]`` for ``shift`` 0, else
    ``[0, shift, shift+G, shift+2G, …, length]``. The last group ends at ``length`` (shorter when it is cut off)."""
    if length <= 0:
        return [0]
    borders = [0]
    border = shift if shift > 0 else group_size
    while border < length:
        borders.append(border)
        border += group_size
    borders.append(length)
    return borders


def s2_borders(length: int, group_size: int) -> tuple[list[int], list[int]]:
    """(unshifted, shifted) group borders of one sequence of ``length`` tokens: the shifted half's groups are offset
    by ``group_size // 2``, with half-size groups at both ends (the reference's flash-attention path)."""
    return group_borders(length, group_size), group_borders(length, group_size, group_size // 2)


def group_size_for(length: int, ratio: float) -> int:
    """G = ⌈ratio · length⌉ (exact rational arithmetic: 0.25 × 1024 = 256, 0.25 × 1025 = 257)."""
    fraction = Fraction(ratio).limit_denominator(1 << 20)
    return -(-length * fraction.numerator // fraction.denominator)


def head_split(heads: int) -> int:
    """Number of unshifted query heads: ⌊H/2⌋ (the rest are shifted)."""
    return heads // 2


# The attention over groups ----------------------------------------------------------------------------------------


@functools.cache
def _flash_varlen():
    """flash-attn's ``flash_attn_varlen_func``, or None where it is not installed (looked up once)."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # a broken build (e.g. compiled for another torch): SDPA is exact too
        return None
    return flash_attn_varlen_func


_FALLBACK_SAID: set[str] = set()


def _choose_kernel(kernel: str, query: torch.Tensor) -> str:
    """``auto``: flash-attn's varlen kernel on a CUDA device in fp16/bf16 when installed, else SDPA. ``flash``
    requested where it cannot run falls back to SDPA with one log line (once per reason)."""
    if kernel not in KERNELS:
        raise RopekitError(f"unknown S²-Attn kernel {kernel!r}", f"use one of: {', '.join(KERNELS)}")
    if kernel == "sdpa":
        return "sdpa"
    reason = None
    if _flash_varlen() is None:
        reason = "flash-attn is not installed (pip install flash-attn on a CUDA machine)"
    elif not query.is_cuda:
        reason = "the tensors are not on a CUDA device"
    elif query.dtype not in (torch.float16, torch.bfloat16):
        reason = f"flash-attn needs fp16/bf16, got {str(query.dtype).removeprefix('torch.')}"
    if reason is None:
        return "flash"
    if kernel == "flash" and reason not in _FALLBACK_SAID:
        _FALLBACK_SAID.add(reason)
        log.warning("S²-Attn: flash-attention requested but %s; using PyTorch SDPA (same result)", reason)
    return "sdpa"


def head_blocks(first: int, stop: int, rep: int) -> list[tuple[range, range]]:
    """Query heads ``[first, stop)`` cut into blocks that each read a contiguous run of key/value heads with a uniform
    GQA factor: whole key/value groups together, a partly covered group (odd H) on its own. (query heads, kv heads)."""
    blocks, head = [], first
    while head < stop:
        if head % rep == 0 and stop - head >= rep:
            end = head + rep * ((stop - head) // rep)
        else:
            end = min(stop, (head // rep + 1) * rep)
        blocks.append((range(head, end), range(head // rep, (end - 1) // rep + 1)))
        head = end
    return blocks


def layout(spans: list[tuple[int, int]], total: int) -> list[tuple[int, int]]:
    """Cover ``[0, total)`` in order with pieces ``(count, length)``: ``count`` consecutive groups of ``length``
    tokens (adjacent groups of equal length merged, so one SDPA call serves them), or ``(0, length)`` for tokens in
    no group (padding). ``spans``: ``(flat start, length)``, non-overlapping."""
    pieces, cursor = [], 0
    for start, length in sorted(spans):
        if start > cursor:
            pieces.append((0, start - cursor))
        elif start < cursor:
            raise ValueError("S²-Attn groups overlap")
        count, previous = (pieces[-1] if pieces else (0, 0))
        if count and previous == length and start == cursor:
            pieces[-1] = (count + 1, length)
        else:
            pieces.append((1, length))
        cursor = start + length
    if cursor < total:
        pieces.append((0, total - cursor))
    return pieces


def _sdpa_pieces(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pieces: list[tuple[int, int]], scale: float,
                 dropout: float) -> torch.Tensor:
    """q ``[T, h, D]``, k/v ``[T, h_kv, D]`` (token-major views) → ``[T, h, D]``: causal SDPA per group, zeros elsewhere.
    Each run of equal groups is a zero-copy 4-D view ``[groups, heads, G, D]``; splitting (not slicing) the token
    axis keeps the backward to one concatenation."""
    sizes = [count * length if count else length for count, length in pieces]
    outputs = []
    for (count, length), qp, kp, vp in zip(pieces, q.split(sizes), k.split(sizes), v.split(sizes)):
        if not count:
            outputs.append(q.new_zeros(length, q.shape[1], v.shape[2]))
            continue
        view = lambda x: x.view(count, length, x.shape[1], x.shape[2]).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(view(qp), view(kp), view(vp), dropout_p=dropout, is_causal=True, scale=scale,
                                             enable_gqa=q.shape[1] != k.shape[1])
        outputs.append(out.transpose(1, 2).reshape(count * length, q.shape[1], v.shape[2]))
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def _flash_pieces(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pieces: list[tuple[int, int]], scale: float,
                  dropout: float) -> torch.Tensor:
    """The same with one ``flash_attn_varlen_func`` call: every group (and every padding stretch, whose outputs are
    then zeroed) is one sequence of ``cu_seqlens``."""
    lengths, keep = [], []
    for count, length in pieces:
        lengths += [length] * max(count, 1)
        keep.append((count > 0, count * length if count else length))
    cu = torch.tensor([0, *lengths], device=q.device).cumsum(0).to(torch.int32)
    out = _flash_varlen()(q, k, v, cu, cu, max(lengths), max(lengths), dropout_p=dropout, softmax_scale=scale, causal=True)
    if all(real for real, _ in keep):
        return out
    mask = torch.cat([torch.full((n,), real, device=q.device) for real, n in keep])
    return out * mask[:, None, None].to(out.dtype)


def attend_groups(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, spans: tuple[list, list], scale: float,
                  dropout: float = 0.0, kernel: str = "auto") -> torch.Tensor:
    """Causal attention inside explicit groups, per half of the query heads; returns ``[B, S, H, D]``.

    query ``[B, H, S, D]``; key/value ``[B, H_kv, S, D]``; ``spans`` = (unshifted, shifted), each a list of
    ``(row, start, length)``. Tokens covered by no span (padding) get output 0 and no gradient.
    """
    batch, heads, seq, dim = query.shape
    kv_heads = key.shape[1]
    rep = heads // kv_heads
    attend = _flash_pieces if _choose_kernel(kernel, query) == "flash" else _sdpa_pieces
    # token-major [B·S, heads, D]: a view for the model's q/k/v, which are [B, S, H, D] in memory
    q = query.transpose(1, 2).reshape(batch * seq, heads, dim)
    k = key.transpose(1, 2).reshape(batch * seq, kv_heads, key.shape[-1])
    v = value.transpose(1, 2).reshape(batch * seq, kv_heads, value.shape[-1])
    split = head_split(heads)
    blocks = [(b, 0) for b in head_blocks(0, split, rep)] + [(b, 1) for b in head_blocks(split, heads, rep)]
    q_blocks = q.split([len(qh) for (qh, _), _ in blocks], dim=1)
    halves = [layout([(row * seq + start, length) for row, start, length in half if length > 0], batch * seq) for half in spans]
    outputs = []
    for ((_, kv_range), half), q_block in zip(blocks, q_blocks):
        kv = slice(kv_range.start, kv_range.stop)
        outputs.append(attend(q_block, k[:, kv], v[:, kv], halves[half], scale, dropout))
    return torch.cat(outputs, dim=1).view(batch, seq, heads, v.shape[-1])


def _check_heads(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise RopekitError(f"s2_attention expects [batch, heads, seq, head_dim] tensors, got query {tuple(query.shape)}, "
                           f"key {tuple(key.shape)}, value {tuple(value.shape)}", "pass 4-D tensors")
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads < 2:
        raise RopekitError(f"S²-Attn needs at least 2 query heads (an unshifted and a shifted half), got {heads}",
                           "use full attention for single-head models")
    if kv_heads < 1 or heads % kv_heads or value.shape[1] != kv_heads:
        raise RopekitError(f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads}, values {value.shape[1]})",
                           "pass keys and values with the same head count, dividing the query heads")
    if key.shape[2] != query.shape[2] or value.shape[2] != query.shape[2]:
        raise RopekitError(f"S²-Attn got {key.shape[2]} keys for {query.shape[2]} queries (a KV cache?)",
                           "S²-Attn is for training forwards without a cache; use full attention for generation")


def s2_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, group_size: int, lengths: torch.Tensor | None = None,
                 scale: float | None = None, *, dropout: float = 0.0, kernel: str = "auto") -> torch.Tensor:
    """LongLoRA's shifted sparse attention.

    Args:
        query: ``[batch, heads, seq, head_dim]``, post-RoPE; any floating dtype SDPA accepts (no internal down-cast).
        key, value: ``[batch, kv_heads, seq, head_dim]``; ``heads`` a multiple of ``kv_heads`` (query head h reads
            key/value head h // (heads / kv_heads)).
        group_size: G ≥ 2. Heads ``[0, ⌊H/2⌋)`` attend causally inside groups ``[0, G), [G, 2G), …``; heads
            ``[⌊H/2⌋, H)`` inside groups with borders ``0, s, s+G, s+2G, …``, ``s = G // 2``.
        lengths: int ``[batch]``: row b's real tokens are ``[0, lengths[b])`` (right padding); None: all ``seq``.
            Groups are cut off at each row's length; padding is never attended.
        scale: logit scale, default ``head_dim ** -0.5``.
        dropout: attention dropout probability (training).
        kernel: ``auto`` (flash-attn varlen on a GPU in fp16/bf16 when installed, else SDPA), ``sdpa`` or ``flash``
            (falls back to SDPA with one log line where flash-attn cannot run).

    Returns:
        ``[batch, heads, seq, head_dim]``; rows at positions ≥ length are 0 (and pass no gradient).
    """
    _check_heads(query, key, value)
    if not query.is_floating_point():
        raise RopekitError(f"s2_attention needs floating-point tensors, got {query.dtype}", "cast q, k, v to a float dtype")
    if int(group_size) != group_size or group_size < 2:
        raise RopekitError(f"S²-Attn group size must be an integer of at least 2 tokens, got {group_size}",
                           "use a larger group size (LongLoRA uses a quarter of the sequence)")
    batch, _, seq, head_dim = query.shape
    if lengths is None:
        rows = [seq] * batch
    else:
        lengths = torch.as_tensor(lengths)
        if lengths.shape != (batch,) or lengths.is_floating_point() or lengths.is_complex():
            raise RopekitError(f"lengths must be an integer tensor of shape [{batch}], got {tuple(lengths.shape)} {lengths.dtype}",
                               "pass one token count per row")
        rows = [int(n) for n in lengths.tolist()]
        if any(n < 0 or n > seq for n in rows):
            raise RopekitError(f"lengths must lie in [0, {seq}], got {rows}", "pass each row's count of real tokens")
    spans = ([], [])
    for row, length in enumerate(rows):
        for half, borders in zip(spans, s2_borders(length, int(group_size))):
            half.extend((row, a, b - a) for a, b in zip(borders, borders[1:]))
    scale = head_dim ** -0.5 if scale is None else scale
    return attend_groups(query, key, value, spans, scale, dropout, kernel).transpose(1, 2)


# Training integration ---------------------------------------------------------------------------------------------


def _runs(keys: torch.Tensor) -> list[tuple[int, int, int]]:
    """Maximal runs of equal values in a 1-D tensor: ``(start, length, value)``."""
    n = keys.numel()
    if n == 0:
        return []
    change = torch.nonzero(keys[1:] != keys[:-1]).flatten() + 1
    starts = [0, *change.tolist()]
    ends = [*change.tolist(), n]
    values = keys[starts].tolist()
    return [(a, b - a, v) for a, b, v in zip(starts, ends, values)]


def segments_from_mask(mask: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Segments ``(start, length)`` of each row from a 4-D block-causal mask ``[B, 1, S, S]`` (boolean, or additive
    with the dtype's minimum for masked entries), as transformers builds for padded or packed rows.

    Query t is a real token when it may attend to itself; its segment starts at the first key it may attend to.
    Raises when a row is not causal inside contiguous segments (e.g. sliding windows or bidirectional blocks).
    """
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    m = mask[:, 0]
    seq = m.shape[-1]
    if m.shape[-2] != seq:
        raise RopekitError(f"S²-Attn got an attention mask of shape {tuple(mask.shape)} (queries ≠ keys)",
                           "S²-Attn is for training forwards without a cache")
    t = torch.arange(seq, device=m.device)
    _, first = torch.max(m, dim=-1)  # first visible key (0 when none)
    _, last_flipped = torch.max(m.flip(-1), dim=-1)
    last = seq - 1 - last_flipped
    count = m.sum(-1)
    real = m.diagonal(dim1=-2, dim2=-1)
    block_causal = ~real | ((last == t) & (count == t - first + 1))
    if not bool(block_causal.all()):
        raise RopekitError("S²-Attn needs a causal attention mask over contiguous segments, and this layer's mask is not",
                           "train with padded or packed rows of plain causal attention (no bidirectional or windowed blocks)")
    keys = torch.where(real, first, torch.full_like(first, -1))
    rows = []
    for row_keys in keys:
        segments = []
        for start, length, value in _runs(row_keys):
            if value < 0:
                continue
            if value != start:
                raise RopekitError("S²-Attn found a segment whose first token cannot see itself first",
                                   "train with padded or packed rows of plain causal attention")
            segments.append((start, length))
        rows.append(segments)
    return rows


def segments_from_padding(mask: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Segments from a 2-D padding mask ``[B, S]`` (flash-attention backends): each run of real tokens."""
    return [[(start, length) for start, length, value in _runs(row.bool().to(torch.int8)) if value] for row in mask]


def segments_from_positions(position_ids: torch.Tensor | None, batch: int, seq: int, cu_seqlens=None) -> list[list[tuple[int, int]]]:
    """Segments of rows without a mask. Flash-attention backends treat a single row whose positions are not
    ``0, 1, 2, …`` as packed, with a new sequence wherever the position equals the row's minimum (transformers'
    ``prepare_fa_kwargs_from_position_ids``), or take ``cu_seq_lens_q`` directly; otherwise a row is one sequence."""
    if cu_seqlens is not None and batch == 1:
        borders = [int(b) for b in cu_seqlens.tolist()]
        return [[(a, b - a) for a, b in zip(borders, borders[1:]) if b > a]]
    if position_ids is not None and batch == 1 and seq > 1:
        positions = position_ids.reshape(-1)
        if bool((positions - positions.min() != torch.arange(seq, device=positions.device)).any()):
            starts = torch.nonzero(positions == positions.min()).flatten().tolist()
            if starts[0] != 0:
                starts = [0, *starts]
            ends = [*starts[1:], seq]
            return [[(a, b - a) for a, b in zip(starts, ends)]]
    return [[(0, seq)] for _ in range(batch)]


class S2Training:
    """S²-Attn for the training forward and backward of ``model``, while the context is open.

    ``group_ratio``: G = ⌈ratio · segment length⌉, ratio in (0, 1]. ``min_length``: segments of at most this many
    tokens use full attention. ``kernel``: ``auto``, ``sdpa`` or ``flash`` (see :func:`s2_attention`).
    """

    def __init__(self, model, group_ratio: float = 0.25, min_length: int = 0, kernel: str = "auto"):
        check_options(group_ratio, min_length, kernel)
        self.group_ratio, self.min_length, self.kernel = float(group_ratio), int(min_length), kernel
        self.modules = {id(m) for m in model.modules()}
        self._cache: tuple = (None, None, None)

    def __enter__(self):
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        self._cache = (None, None, None)
        return False

    def _segments(self, module, attention_mask, kwargs, batch: int, seq: int) -> list[list[tuple[int, int]]]:
        # Every layer of one forward (and the checkpointed re-run in the backward) gets the same mask object: read
        # the segments once per forward.
        ref, shape, cached = self._cache
        probe = attention_mask if isinstance(attention_mask, torch.Tensor) else kwargs.get("position_ids")
        if probe is not None and ref is not None and ref() is probe and shape == (batch, seq):
            return cached
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4:
            segments = segments_from_mask(attention_mask)
        elif isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
            segments = segments_from_padding(attention_mask[:, -seq:])
        elif attention_mask is None:
            backend = getattr(module.config, "_attn_implementation", None) or "sdpa"
            if backend.startswith("flash"):
                segments = segments_from_positions(kwargs.get("position_ids"), batch, seq, kwargs.get("cu_seq_lens_q"))
            else:  # transformers gives SDPA/eager no mask only for plain causal rows
                segments = [[(0, seq)] for _ in range(batch)]
        else:
            raise RopekitError(f"S²-Attn cannot read an attention mask of type {type(attention_mask).__name__} (flex_attention?)",
                               "train with attn_implementation sdpa, eager or flash_attention_2")
        if probe is not None:
            self._cache = (weakref.ref(probe), (batch, seq), segments)
        return segments

    def spans(self, segments: list[list[tuple[int, int]]]) -> tuple[tuple[list, list], bool]:
        """Per-half spans ``(row, start, length)`` for the segments, and whether any segment is sparse."""
        unshifted, shifted = [], []
        sparse = False
        for row, row_segments in enumerate(segments):
            for start, length in row_segments:
                group = group_size_for(length, self.group_ratio)
                if length <= self.min_length or group < 2:
                    unshifted.append((row, start, length))
                    shifted.append((row, start, length))
                    continue
                sparse = True
                for half, borders in zip((unshifted, shifted), s2_borders(length, group)):
                    half.extend((row, start + a, b - a) for a, b in zip(borders, borders[1:]))
        return (unshifted, shifted), sparse

    def __call__(self, inner, module, query, key, value, attention_mask, **kwargs):
        """Attention of one layer in the training forward: S²-Attn, or ``inner`` (the model's own backend) where the
        layer keeps its pattern (sliding windows) or every segment is short enough for full attention."""
        name = type(module).__name__
        if not module.training:
            raise RopekitError(f"S²-Attn is on but {name} is in eval mode (it is a training-only attention)",
                               "call model.train() inside the S²-Attn context, or evaluate outside it (full attention)")
        if key.shape[2] != query.shape[2]:
            raise RopekitError(f"S²-Attn got {key.shape[2]} keys for {query.shape[2]} queries in {name} (a KV cache)",
                               "train with use_cache=False; generation uses full attention")
        if kwargs.get("softcap") is not None:
            raise RopekitError(f"S²-Attn does not support attention logit soft-capping ({name})",
                               "train this model with --attention full")
        plan = getattr(module.config, "ropekit", None)
        extend = ((plan or {}).get("attention") or {}).get("self_extend") if isinstance(plan, dict) else None
        if extend and getattr(module, "layer_idx", None) in extend["layers"]:
            raise RopekitError("S²-Attn cannot train a Self-Extend model (Self-Extend is an inference-time method)",
                               "extend with a frequency method for training, or use --attention full")
        layer_types = getattr(module.config, "layer_types", None) or []
        layer = getattr(module, "layer_idx", None)
        if kwargs.get("sliding_window") or (layer is not None and layer < len(layer_types) and layer_types[layer] == "sliding_attention"):
            return inner(module, query, key, value, attention_mask, **kwargs)
        _check_heads(query, key, value)
        batch, heads, seq, head_dim = query.shape
        spans, sparse = self.spans(self._segments(module, attention_mask, kwargs, batch, seq))
        if not sparse:
            return inner(module, query, key, value, attention_mask, **kwargs)
        scale = kwargs.get("scaling")
        scale = head_dim ** -0.5 if scale is None else scale
        dropout = kwargs.get("dropout", 0.0) or 0.0
        return attend_groups(query, key, value, spans, scale, dropout, self.kernel), None


_ACTIVE: list[S2Training] = []


def training_attention(module) -> S2Training | None:
    """The open S²-Attn context that owns ``module``, or None (then the layer runs its ordinary attention)."""
    for context in reversed(_ACTIVE):
        if id(module) in context.modules:
            return context
    return None


def check_options(group_ratio: float, min_length: int, kernel: str = "auto") -> None:
    """One-line errors for bad S²-Attn settings, before any model is loaded."""
    if not isinstance(group_ratio, (int, float)) or not math.isfinite(group_ratio) or not 0 < group_ratio <= 1:
        raise RopekitError(f"S²-Attn group ratio must be in (0, 1], got {group_ratio}",
                           "use e.g. --group-ratio 0.25 (LongLoRA's quarter of the sequence)")
    if int(min_length) != min_length or min_length < 0:
        raise RopekitError(f"--s2-min-length must be a whole number of tokens ≥ 0, got {min_length}",
                           "use 0 to apply S²-Attn at every length")
    if kernel not in KERNELS:
        raise RopekitError(f"unknown S²-Attn kernel {kernel!r}", f"use one of: {', '.join(KERNELS)}")


def check_model(model) -> None:
    """One-line refusals for models S²-Attn cannot train, before the first step (context parallelism is refused
    with the other launch checks, in :func:`ropekit.training.parallel.check_context_parallel`)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "attn_logit_softcapping", None):
        raise RopekitError(f"S²-Attn does not support attention logit soft-capping ({config.model_type}: "
                           f"attn_logit_softcapping={config.attn_logit_softcapping})", "train this model with --attention full")
    plan = getattr(config, "ropekit", None) or {}
    if isinstance(plan, dict) and (plan.get("attention") or {}).get("self_extend"):
        raise RopekitError("S²-Attn cannot train a Self-Extend model (Self-Extend is an inference-time method)",
                           "extend with a frequency method for training, or use --attention full")
    backend = getattr(config, "_attn_implementation", None) or "sdpa"
    if backend == "flex_attention":
        raise RopekitError("S²-Attn does not run under flex_attention", "train with attn_implementation sdpa, eager or flash_attention_2")
    if config.num_attention_heads < 2:
        raise RopekitError(f"S²-Attn needs at least 2 query heads, this model has {config.num_attention_heads}",
                           "use --attention full")


@contextlib.contextmanager
def s2_training(model, group_ratio: float = 0.25, min_length: int = 0, kernel: str = "auto"):
    """Open S²-Attn for ``model``'s training forwards (and backwards) inside the block."""
    with S2Training(model, group_ratio, min_length, kernel) as context:
        yield context
