"""Longest sequence that trains (two optimizer steps, batch 1): plain transformers vs ropekit's memory savers.

    python benchmarks/max_length.py --shape tinyllama-1.1b                 # full fine-tuning, one GPU
    python benchmarks/max_length.py --shape llama2-7b --lora 8              # LoRA r=8 on q,k,v,o
    python benchmarks/max_length.py --shape smollm2-135m --max 16k          # a CPU smoke run (no OOM search)

Variants: plain (SDPA, gradient checkpointing, fused AdamW, loss from full logits) and ropekit (+ chunked loss,
tiled MLP, activation offload to CPU, EABF logit scale). Lengths double from --start until a step runs out of
memory, then a bisection narrows the limit to --granularity. Prints the longest length and its peak memory.
"""

from __future__ import annotations

import argparse
import gc

import torch

from train_throughput import SHAPES, config_for


def trains(shape: str, length: int, variant: str, lora: int, device: str) -> tuple[bool, float]:
    import ropekit
    from transformers import AutoModelForCausalLM

    from ropekit.memory import ActivationOffload, make_chunked_loss, tile_mlp

    config = config_for(shape, length)
    model = optimizer = None
    try:
        torch.manual_seed(0)
        weights = torch.bfloat16 if lora and device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_config(config, dtype=weights, attn_implementation="sdpa").to(device)
        if variant == "ropekit":
            ropekit.extend(model, "eabf", target_length=max(length, 4 * config.max_position_embeddings))
            tile_mlp(model, 8192)
        if lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=lora, lora_alpha=2 * lora, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            model.enable_input_require_grads()
        model.config.use_cache = False
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=device == "cuda")
        loss_fn = make_chunked_loss(model) if variant == "ropekit" else None
        ids = torch.randint(0, config.vocab_size, (1, length), device=device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            with ActivationOffload(variant == "ropekit"), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
                if loss_fn is None:
                    loss = model(input_ids=ids, labels=ids).loss
                else:
                    loss = loss_fn(model(input_ids=ids, output_hidden_states=True, logits_to_keep=1), ids)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        return True, peak
    except torch.cuda.OutOfMemoryError:
        return False, float("nan")
    finally:
        del model, optimizer
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tinyllama-1.1b", choices=sorted(SHAPES))
    parser.add_argument("--lora", type=int, default=0)
    parser.add_argument("--start", default="32k")
    parser.add_argument("--max", default="1m")
    parser.add_argument("--granularity", default="8k")
    parser.add_argument("--variants", default="plain,ropekit")
    args = parser.parse_args()
    from ropekit.lengths import parse_length

    device = "cuda" if torch.cuda.is_available() else "cpu"
    start, ceiling, step = parse_length(args.start), parse_length(args.max), parse_length(args.granularity)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (no out-of-memory search: lengths up to --max only)"
    print(f"longest trainable sequence, {args.shape}{f' LoRA r={args.lora}' if args.lora else ' full fine-tuning'}; {name}")
    for variant in args.variants.split(","):
        good, bad, peak = 0, None, float("nan")
        length = min(start, ceiling)
        while length <= ceiling:
            ok, memory = trains(args.shape, length, variant, args.lora, device)
            print(f"  {variant:<8} {length:>8} tokens: {'ok' if ok else 'out of memory'}" + (f" ({memory:.1f} GiB)" if ok and device == 'cuda' else ""), flush=True)
            if not ok:
                bad = length
                break
            good, peak = length, memory
            length *= 2
        while bad is not None and bad - good > step:
            middle = (good + bad) // 2 // step * step
            ok, memory = trains(args.shape, middle, variant, args.lora, device)
            print(f"  {variant:<8} {middle:>8} tokens: {'ok' if ok else 'out of memory'}", flush=True)
            good, bad, peak = (middle, bad, memory) if ok else (good, middle, peak)
        print(f"{variant:<8} longest: {good} tokens" + (f", peak {peak:.1f} GiB" if device == "cuda" else "") + ("" if bad else f" (stopped at --max {ceiling})"))


if __name__ == "__main__":
    main()
