"""Cost of the entropy-aware logit scale: the same work with and without it, measured side by side.

    python benchmarks/logit_scale_overhead.py                      # CPU: attention only, SmolLM2 heads, fp32, 2K-8K
    python benchmarks/logit_scale_overhead.py                      # one GPU: the defaults below, bf16
    python benchmarks/logit_scale_overhead.py --smoke --json /tmp/x.json   # tiny shapes, seconds on a CPU

Two measurements, each variant interleaved with its baseline (warm-up, then the median of --repeats, spread shown):
  step      — a whole training step (forward, backward, fused AdamW; gradient checkpointing, bf16 autocast over fp32
              weights, batch 1, random weights) of --shape extended with EABF, vs the same model and step with the
              logit scale switched off, which is exactly ABF (EABF = ABF's θ × 50 + the scale). GPU default:
              TinyLlama-1.1B shape at 16K, 32K, 64K. Goal: ratio ≤ 1.01 at every length (summary.max_step_ratio).
  attention — causal SDPA forward+backward on random q/k/v vs ropekit's path with the scale (query × t in fp32
              before the same SDPA call). GPU default: 32 heads × 128, 8K-64K.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from _common import (SHAPES, Budget, Results, add_common_args, config_for, enable_checkpointing, device_name, free_memory, is_oom, json_path,
                     measure_interleaved, on_gpu, peak_memory_gib, reset_peak_memory, setup)

from ropekit.attention import scale_query
from ropekit.lengths import parse_lengths


def attention_times(length: int, heads: int, kv_heads: int, head_dim: int, dtype, native: int, repeats: int, warmup: int) -> dict:
    device = "cuda" if on_gpu() else "cpu"
    q = torch.randn(1, heads, length, head_dim, dtype=dtype, device=device, requires_grad=True)
    k = torch.randn(1, kv_heads, length, head_dim, dtype=dtype, device=device, requires_grad=True)
    v = torch.randn(1, kv_heads, length, head_dim, dtype=dtype, device=device, requires_grad=True)
    positions = torch.arange(length, device=device)[None]
    grad = torch.randn(1, heads, length, head_dim, dtype=dtype, device=device)
    gqa = heads != kv_heads

    def plain():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa).backward(grad)

    def scaled():
        F.scaled_dot_product_attention(scale_query(q, positions, native), k, v, is_causal=True, enable_gqa=gqa).backward(grad)

    return measure_interleaved({"plain": plain, "scaled": scaled}, repeats=repeats, warmup=warmup)


@contextlib.contextmanager
def scale_off(model):
    """The extended model without its logit scale: EABF minus the scale is ABF (same θ, same everything else)."""
    record = model.config.ropekit
    saved = record["attention"]
    record["attention"] = {}
    try:
        yield
    finally:
        record["attention"] = saved


def step_times(shape: str, length: int, repeats: int, warmup: int) -> dict:
    import ropekit
    from transformers import AutoModelForCausalLM

    device = "cuda" if on_gpu() else "cpu"
    config = config_for(shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    ropekit.extend(model, "eabf", target_length=max(length, 4 * config.max_position_embeddings))
    enable_checkpointing(model)
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=on_gpu())
    ids = torch.randint(0, config.vocab_size, (1, length), device=device)

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=on_gpu()):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def abf_step():
        with scale_off(model):
            step()

    reset_peak_memory()
    try:
        return {**measure_interleaved({"abf": abf_step, "eabf": step}, repeats=repeats, warmup=warmup), "peak_gib": peak_memory_gib()}
    finally:
        del model, optimizer
        free_memory()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default=None, help="attention-only lengths (GPU default 8k,16k,32k,64k; CPU 2k,4k,8k)")
    parser.add_argument("--step-lengths", default=None, help="whole-step lengths (GPU default 16k,32k,64k; CPU: none); 'none' skips")
    parser.add_argument("--shape", default="tinyllama-1.1b", choices=sorted(SHAPES), help="model shape of the whole-step rows")
    parser.add_argument("--heads", type=int, default=None, help="attention rows: query heads (GPU default 32, CPU 9)")
    parser.add_argument("--kv-heads", type=int, default=None, help="attention rows: key/value heads (GPU default 32, CPU 3)")
    parser.add_argument("--head-dim", type=int, default=None, help="attention rows: head dimension (GPU default 128, CPU 64)")
    parser.add_argument("--native", type=int, default=None, help="c in the scale for the attention rows (default 1/4 of the shortest length)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    add_common_args(parser)
    args = parser.parse_args(argv)
    setup(args)
    gpu = on_gpu()
    stand_ins = None
    if args.smoke:
        args.lengths, args.step_lengths, args.shape = "64,128", "64,128", "tiny"
        args.heads, args.kv_heads, args.head_dim, args.repeats, args.warmup = 4, 2, 16, 2, 1
    heads = args.heads or (32 if gpu else 9)
    kv_heads = args.kv_heads or (32 if gpu else 3)
    head_dim = args.head_dim or (128 if gpu else 64)
    lengths = parse_lengths(args.lengths or ("8k,16k,32k,64k" if gpu else "2k,4k,8k"))
    step_default = "16k,32k,64k" if gpu else "none"
    step_lengths = [] if (args.step_lengths or step_default) == "none" else parse_lengths(args.step_lengths or step_default)
    dtype = torch.bfloat16 if gpu else torch.float32
    native = args.native or max(2, lengths[0] // 4)
    results = Results("logit_scale_overhead", json_path(args, "logit_scale_overhead"), smoke=args.smoke, stand_ins=stand_ins)
    budget = Budget(args.budget)
    print(f"logit-scale overhead; {device_name()}; {str(dtype).removeprefix('torch.')}; warm-up {args.warmup}, median of {args.repeats}")

    for length in step_lengths:
        if budget.left() <= 0:
            results.add({"kind": "step", "shape": args.shape, "length": length, "status": "skipped: time budget"})
            continue
        try:
            t = step_times(args.shape, length, args.repeats, args.warmup)
        except Exception as err:  # an out-of-memory (or other) failure is a result, not the end of the run
            free_memory()
            status = "out of memory" if is_oom(err) else f"error: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
            results.add({"kind": "step", "shape": args.shape, "length": length, "status": status})
            print(f"  step {args.shape} {length:>7}: {status}", flush=True)
            continue
        ratio = t["eabf"]["median_s"] / t["abf"]["median_s"]
        results.add({"kind": "step", "shape": args.shape, "length": length, "status": "ok", "abf": t["abf"], "eabf": t["eabf"],
                     "ratio": ratio, "peak_gib": t["peak_gib"]})
        print(f"  step {args.shape} {length:>7}: abf {t['abf']['median_s']:.3f}s (±{t['abf']['spread']:.1%})  "
              f"eabf {t['eabf']['median_s']:.3f}s (±{t['eabf']['spread']:.1%})  ratio {ratio:.3f}", flush=True)

    for length in lengths:
        if budget.left() <= 0:
            results.add({"kind": "attention", "length": length, "status": "skipped: time budget"})
            continue
        t = attention_times(length, heads, kv_heads, head_dim, dtype, native, args.repeats, args.warmup)
        ratio = t["scaled"]["median_s"] / t["plain"]["median_s"]
        results.add({"kind": "attention", "length": length, "status": "ok", "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
                     "native": native, "plain": t["plain"], "scaled": t["scaled"], "ratio": ratio})
        print(f"  attention {heads}x{head_dim} (kv {kv_heads}) {length:>7}: plain {t['plain']['median_s'] * 1e3:.2f}ms  "
              f"scaled {t['scaled']['median_s'] * 1e3:.2f}ms (±{t['scaled']['spread']:.1%})  ratio {ratio:.3f}", flush=True)

    steps = [r["ratio"] for r in results.rows if r["kind"] == "step" and r["status"] == "ok"]
    attention = [r["ratio"] for r in results.rows if r["kind"] == "attention" and r["status"] == "ok"]
    results.summarize({"max_step_ratio": max(steps) if steps else None, "max_attention_ratio": max(attention) if attention else None,
                       "step_ratios": {str(r["length"]): r["ratio"] for r in results.rows if r["kind"] == "step" and r["status"] == "ok"},
                       "goal_max_step_ratio": 1.01})
    results.done()
    return results.data


if __name__ == "__main__":
    main()
