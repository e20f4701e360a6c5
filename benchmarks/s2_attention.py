"""S²-Attn (LongLoRA's shifted sparse attention) vs full causal attention, side by side in the same run.

    python benchmarks/s2_attention.py                                  # CPU: TinyLlama layout, 2 layers, 4K/8K/16K
    python benchmarks/s2_attention.py --smoke --json s2.json           # seconds: tiny shapes at 256 tokens (run by a test)
    python benchmarks/s2_attention.py --gpu --json s2-h100.json        # one H100: TinyLlama-1.1B, bf16, 16K/32K/64K
    python benchmarks/s2_attention.py --gpu --attn-implementation flash_attention_2   # baseline on flash-attn too

Two measurements per length, S²-Attn (group = a quarter of the sequence) and its baseline interleaved, median of
--repeats runs each:
  attention — forward+backward of one attention call with random q/k/v (TinyLlama heads: 32 query, 4 key/value,
              head dim 64). Baseline: transformers' own SDPA attention function with a causal mask (what a
              training forward runs); S²-Attn: ``ropekit.s2_attention``.
  step      — a whole training step of a Llama model of that layout (random weights; 2 layers on CPU, all 22 for
              --gpu; a 4K vocabulary on CPU): LongLoRA's LoRA+ (LoRA r 8 on q/k/v/o, embeddings and norms trained), gradient
              checkpointing, the chunked loss, MLP tiles of 4K tokens, AdamW. Baseline: the same model and batch
              with full attention; S²-Attn: inside ``ropekit.methods.s2_attention.s2_training`` (as ``ropekit train
              --attention s2`` runs it).
Times are wall clock and CPU time of this process (user+sys, all threads: steadier than wall time on a shared
machine); ratios are baseline / S²-Attn, so 3.0 means S²-Attn is three times faster.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
import types

import torch

SHAPES = {  # (hidden, intermediate, layers, heads, kv_heads, vocab)
    # TinyLlama-1.1B's layer layout, 2 layers, a 4K vocabulary (CPU: the 32K vocabulary's embedding, its trained copy and
    # AdamW state would take 1.3 GB of memory and most of the step's time, next to 2 layers)
    "tinyllama-2l": (2048, 5632, 2, 32, 4, 4096),
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4, 32000),
    "tiny": (64, 128, 2, 4, 2, 259),  # --smoke
}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(variants: dict, repeats: int, device: str, warmup: bool) -> dict:
    """Run each variant ``repeats`` times, alternating, after an optional warm-up; medians per variant."""
    if warmup:
        for fn in variants.values():
            fn()
    samples = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            samples[name].append(timed(fn, device))
    return {name: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s)) for name, s in samples.items()}


def attention_case(length: int, heads: int, kv_heads: int, head_dim: int, dtype, device: str):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    import ropekit

    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, heads, length, head_dim, generator=g, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(1, kv_heads, length, head_dim, generator=g, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(1, kv_heads, length, head_dim, generator=g, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(1, length, heads, head_dim, generator=g, device=device, dtype=dtype)
    module = types.SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True, training=True)
    group = length // 4

    def full():
        out, _ = sdpa_attention_forward(module, q, k, v, None, scaling=head_dim ** -0.5)  # [B, S, H, D]
        out.backward(grad)

    def s2():
        out = ropekit.s2_attention(q, k, v, group)  # [B, H, S, D]
        out.transpose(1, 2).backward(grad)

    return {"full": full, "s2": s2}


def step_case(shape: str, length: int, dtype, device: str, attn_implementation: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ropekit.methods.s2_attention import s2_training
    from ropekit.training.memory import make_chunked_loss, tile_mlp
    from ropekit.training.stage import TrainOptions, apply_lora

    hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "linear", "factor": max(1.0, length / 2048), "rope_theta": 10000.0})
    torch.manual_seed(0)
    config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config).to(device)
    tile_mlp(model, 4096)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model = apply_lora(model, TrainOptions(lora_r=8, lora_alpha=16, lora_targets="q_proj,k_proj,v_proj,o_proj",
                                           train_embeddings_and_norms=True))
    model.train()
    loss_fn = make_chunked_loss(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=device == "cuda")
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(0)).to(device)

    def step():
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1, use_cache=False)
            loss = loss_fn(out, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def s2():
        with s2_training(model, group_ratio=0.25, min_length=0):
            step()

    return {"full": step, "s2": s2}, model


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default=None, help="default 4k,8k,16k on CPU, 16k,32k,64k with --gpu")
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES), help="default tinyllama-2l on CPU, tinyllama-1.1b with --gpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed attention runs per variant (median)")
    parser.add_argument("--step-repeats", type=int, default=1, help="timed training steps per variant (median)")
    parser.add_argument("--parts", default="attention,step", help="attention, step, or both")
    parser.add_argument("--gpu", action="store_true", help="one CUDA GPU, bf16 (flash-attn's varlen kernel when installed)")
    parser.add_argument("--attn-implementation", default="sdpa", help="the model's backend in the step (sdpa, or flash_attention_2 on a GPU)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes at 256 tokens: checks the script in seconds")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    from ropekit.lengths import parse_lengths

    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA device")
    dtype = torch.bfloat16 if args.gpu else torch.float32
    shape = args.shape or ("tiny" if args.smoke else "tinyllama-1.1b" if args.gpu else "tinyllama-2l")
    lengths = parse_lengths(args.lengths or ("256" if args.smoke else "16k,32k,64k" if args.gpu else "4k,8k,16k"))
    repeats, step_repeats = (1, 1) if args.smoke else (args.repeats, args.step_repeats)
    hidden, _, layers, heads, kv_heads, _ = SHAPES[shape]
    head_dim = hidden // heads
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    results = {"machine": machine(device), "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."), "shape": shape,
               "layers": layers, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "group_ratio": 0.25,
               "command": "python benchmarks/s2_attention.py " + " ".join(os.sys.argv[1:]), "attention": [], "step": []}
    print(f"S²-Attn vs full causal attention; {shape} ({heads} heads, {kv_heads} kv heads, head dim {head_dim}); "
          f"{results['dtype']}; {results['machine']}")
    print(f"{'part':<10} {'length':>7} {'full s':>9} {'S² s':>9} {'ratio':>6} {'full cpu s':>11} {'S² cpu s':>9} {'cpu ratio':>9}")
    for length in lengths:
        for part in parts:
            if part == "attention":
                variants = attention_case(length, heads, kv_heads, head_dim, dtype, device)
                times = interleaved(variants, repeats, device, warmup=True)
            elif part == "step":
                variants, model = step_case(shape, length, dtype, device, args.attn_implementation)
                times = interleaved(variants, step_repeats, device, warmup=args.smoke or device == "cuda" or length == lengths[0])
                del model
            else:
                parser.error(f"unknown part {part!r}")
            (fw, fc), (sw, sc) = times["full"], times["s2"]
            row = {"length": length, "full_s": fw, "s2_s": sw, "ratio": fw / sw, "full_cpu_s": fc, "s2_cpu_s": sc,
                   "cpu_ratio": fc / max(sc, 1e-9)}
            row = {k: v if k == "length" else float(f"{v:.4g}") for k, v in row.items()}
            results[part].append(row)
            print(f"{part:<10} {length:>7} {fw:>9.3f} {sw:>9.3f} {fw / sw:>6.2f} {fc:>11.2f} {sc:>9.2f} {row['cpu_ratio']:>9.2f}", flush=True)
            del variants
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
