"""Training throughput: plain transformers vs ropekit's training step, same model, same length, same run.

    python benchmarks/train_throughput.py --shape smollm2-135m --length 2k              # CPU-sized
    python benchmarks/train_throughput.py --shape tinyllama-1.1b --length 16k --steps 6  # one GPU (random weights)

Variants (each: batch 1, gradient checkpointing, AdamW — fused on a GPU — over random weights; median step time
after one warm-up step):
  plain        transformers as shipped: SDPA, loss from full logits
  +scale       ropekit extension eabf (logit scale in layers ≥ 2), otherwise plain — the method's own cost
  +chunked     + loss from hidden states in chunks (full logits never exist)
  +tiled       + decoder MLPs in 8K-token tiles
  +liger       + liger-kernel fused RMSNorm/SwiGLU/RoPE (when installed, GPU only)
  +flash       + flash-attention 2 (when installed, GPU only)
Prints tokens/s, MFU (model FLOPs per token × tokens/s ÷ peak) and the ratio to plain.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import statistics
import time

import torch

SHAPES = {  # (hidden, intermediate, layers, heads, kv_heads, vocab)
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152),
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4, 32000),
    "llama2-7b": (4096, 11008, 32, 32, 32, 32000),
}


def config_for(shape: str, length: int):
    from transformers import LlamaConfig

    hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    return LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=4096,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def peak_flops(device: str, dtype) -> float:
    """Peak dense FLOP/s: the H100 SXM bf16 spec on GPU (989 TFLOP/s), a measured large matmul on CPU."""
    if device == "cuda":
        return 989e12 if "H100" in torch.cuda.get_device_name(0) else 312e12
    a = torch.randn(2048, 2048, dtype=dtype)
    a @ a
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - start)


def build(variant: str, config, device, dtype, length: int):
    import ropekit
    from transformers import AutoModelForCausalLM

    from ropekit.memory import make_chunked_loss, tile_mlp

    attn = "flash_attention_2" if variant == "+flash" else "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.float32, attn_implementation=attn).to(device)
    if variant != "plain":
        ropekit.extend(model, "eabf", target_length=max(length, 4 * config.max_position_embeddings))
    steps = ["plain", "+scale", "+chunked", "+tiled", "+liger", "+flash"]
    level = steps.index(variant)
    loss_fn = make_chunked_loss(model) if level >= 2 else None
    if level >= 3:
        tile_mlp(model, 8192)
    if level >= 4:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False, cross_entropy=False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")

    def step(ids):
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            if loss_fn is None:
                loss = model(input_ids=ids, labels=ids).loss
            else:
                out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
                loss = loss_fn(out, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return model, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    parser.add_argument("--length", default="2k")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--variants", default="plain,+scale,+chunked,+tiled,+liger,+flash")
    args = parser.parse_args()
    from ropekit.lengths import parse_length
    from ropekit.memory import training_flops_per_token

    length = parse_length(args.length)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = config_for(args.shape, length)
    peak = peak_flops(device, dtype)
    flops = training_flops_per_token(config, length)
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"training step, {args.shape} (random weights), {length} tokens, batch 1, {str(dtype).removeprefix('torch.')}; {name}; "
          f"peak {peak / 1e12:.1f} TFLOP/s; {flops / 1e9:.2f} GFLOP/token")
    print(f"{'variant':<10} {'step s':>8} {'tok/s':>9} {'MFU':>6} {'ratio':>6} {'peak mem GiB':>13}")
    base = None
    ids = torch.randint(0, config.vocab_size, (1, length), device=device)
    for variant in args.variants.split(","):
        if variant == "+liger" and (device != "cuda" or importlib.util.find_spec("liger_kernel") is None):
            print(f"{variant:<10} skipped (needs a GPU and liger-kernel)")
            continue
        if variant == "+flash" and (device != "cuda" or importlib.util.find_spec("flash_attn") is None):
            print(f"{variant:<10} skipped (needs a GPU and flash-attn)")
            continue
        model, step = build(variant, config, device, dtype, length)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step(ids)  # warm-up
        times = []
        for _ in range(args.steps):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(ids)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        speed = length / seconds
        base = base or speed
        memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        print(f"{variant:<10} {seconds:>8.2f} {speed:>9.0f} {flops * speed / peak:>6.1%} {speed / base:>6.2f} {memory:>13.1f}", flush=True)
        del model, step
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
