"""Cost of the entropy-aware logit scale: forward+backward time with and without it, measured side by side.

    python benchmarks/logit_scale_overhead.py                       # CPU: SmolLM2 shapes, fp32, 2K-8K
    python benchmarks/logit_scale_overhead.py --heads 32 --head-dim 128 --dtype bfloat16 --lengths 8k,16k,32k,64k   # GPU

Two measurements per length, each the median of --repeats runs:
  attention — causal SDPA on random q/k/v vs ropekit's attention path with the scale (the query multiplied by
              t = max(1, ln(p+1)/ln c) in fp32 before the same SDPA call);
  model     — a whole forward+backward of the model extended with `abf` vs with `eabf` (same frequencies, plus the
              scale in layers ≥ 2), when --model is given.
Prints the ratio scaled/plain; 1.00 means the scale is free.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from ropekit.attention import scale_query
from ropekit.lengths import parse_lengths


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def attention_ratio(length: int, heads: int, kv_heads: int, head_dim: int, dtype, device, repeats: int, native: int) -> tuple[float, float]:
    q = torch.randn(1, heads, length, head_dim, dtype=dtype, device=device, requires_grad=True)
    k = torch.randn(1, kv_heads, length, head_dim, dtype=dtype, device=device, requires_grad=True)
    v = torch.randn(1, kv_heads, length, head_dim, dtype=dtype, device=device, requires_grad=True)
    positions = torch.arange(length, device=device)[None]
    grad = torch.randn(1, heads, length, head_dim, dtype=dtype, device=device)

    def plain():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=heads != kv_heads).backward(grad)

    def scaled():
        F.scaled_dot_product_attention(scale_query(q, positions, native), k, v, is_causal=True, enable_gqa=heads != kv_heads).backward(grad)

    return timed(plain, repeats), timed(scaled, repeats)


def model_ratio(model_name: str, length: int, repeats: int) -> tuple[float, float]:
    import ropekit

    base, _ = ropekit.load_model(model_name)
    abf = ropekit.extend(copy.deepcopy(base), "abf", target_length=4 * base.config.max_position_embeddings)
    eabf = ropekit.extend(copy.deepcopy(base), "eabf", target_length=4 * base.config.max_position_embeddings)
    device = next(base.parameters()).device
    ids = torch.randint(0, base.config.vocab_size, (1, length), device=device)

    def step(model):
        return lambda: model(input_ids=ids, labels=ids, use_cache=False).loss.backward()

    return timed(step(abf), repeats), timed(step(eabf), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="2k,4k,8k")
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--native", type=int, default=1024, help="c in the scale (positions beyond it get t > 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=None, help="also time a whole model, e.g. smollm2-135m")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"logit-scale overhead, forward+backward, {args.dtype}, {args.heads} heads (kv {args.kv_heads}) x {args.head_dim}; {name}")
    print(f"{'length':>8} {'attention plain':>16} {'with scale':>12} {'ratio':>7}" + (f" {'model abf':>11} {'model eabf':>11} {'ratio':>7}" if args.model else ""))
    for length in parse_lengths(args.lengths):
        plain, scaled = attention_ratio(length, args.heads, args.kv_heads, args.head_dim, dtype, device, args.repeats, args.native)
        line = f"{length:>8} {plain * 1e3:>14.1f}ms {scaled * 1e3:>10.1f}ms {scaled / plain:>7.3f}"
        if args.model:
            m_plain, m_scaled = model_ratio(args.model, length, max(1, args.repeats // 2))
            line += f" {m_plain:>10.2f}s {m_scaled:>10.2f}s {m_scaled / m_plain:>7.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
