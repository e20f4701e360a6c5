"""Longest sequence that trains (two optimizer steps, batch 1): plain transformers vs ropekit's memory savers.

    python benchmarks/max_length.py --shape tinyllama-1.1b                  # 1.1B full fine-tuning, one GPU
    python benchmarks/max_length.py --shape llama2-7b --lora 8 --resume     # 6.7B LoRA r=8 on q,k,v,o, continuing the file
    python benchmarks/max_length.py --shape smollm2-135m --ladder 512,1k    # a CPU run (no out-of-memory search)
    python benchmarks/max_length.py --smoke --json /tmp/x.json              # tiny shapes, seconds on a CPU

Variants: plain (SDPA, gradient checkpointing, fused AdamW, loss from full logits) and ropekit (+ chunked loss,
tiled MLP, activation offload to pinned CPU memory, EABF logit scale). Each variant climbs a capped ladder of lengths
(--ladder, default 96K, 128K, 192K, 256K; add 384K when time allows) and stops at its first failure. Every probe
runs in its own subprocess (an out-of-memory error, or a crash, cannot take the run down or leave memory behind) with
a timeout, and a probe whose time, extrapolated by FLOPs from the previous rung, would not fit in --budget is not
started. The results file is rewritten after every probe; with --resume, probes already in it are not repeated, so
a ladder can be continued in the next 10-minute window.
summary: full_1b_plain, full_1b_ropekit, lora_7b_plain, lora_7b_ropekit — the longest length that trained (tokens).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import (SHAPES, Budget, Results, add_common_args, config_for, device_name, enable_checkpointing, free_memory,
                     is_oom, json_path, model_flops_per_token, on_gpu, peak_memory_gib, reset_peak_memory, setup)

from ropekit.lengths import format_length, parse_lengths

SUMMARY_KEYS = {("tinyllama-1.1b", False): "full_1b", ("llama2-7b", True): "lora_7b"}
MARK = "PROBE_RESULT "


def probe(shape: str, length: int, variant: str, lora: int, steps: int = 2) -> dict:
    """``steps`` optimizer steps at ``length`` tokens, in this process; returns status, peak memory and step times."""
    import ropekit
    from transformers import AutoModelForCausalLM

    from ropekit.training.memory import ActivationOffload, make_chunked_loss, tile_mlp

    device = "cuda" if on_gpu() else "cpu"
    config = config_for(shape)
    torch.manual_seed(0)
    weights = torch.bfloat16 if lora and on_gpu() else torch.float32  # LoRA: frozen bf16 base, as users run it
    model = optimizer = None
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=weights, attn_implementation="sdpa")
        if variant == "ropekit":
            ropekit.extend(model, "eabf", target_length=max(length, 4 * config.max_position_embeddings))
            tile_mlp(model, 8192)
        if lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=lora, lora_alpha=2 * lora, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
            model.enable_input_require_grads()
        enable_checkpointing(model)
        model.config.use_cache = False
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, fused=on_gpu())
        loss_fn = make_chunked_loss(model) if variant == "ropekit" else None
        ids = torch.randint(0, config.vocab_size, (1, length), device=device)
        reset_peak_memory()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            with ActivationOffload(variant == "ropekit"), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=on_gpu()):
                if loss_fn is None:
                    loss = model(input_ids=ids, labels=ids).loss
                else:
                    loss = loss_fn(model(input_ids=ids, output_hidden_states=True, logits_to_keep=1), ids)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if on_gpu():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return {"status": "ok", "peak_gib": peak_memory_gib(), "step_s": times}
    except Exception as err:
        if not is_oom(err):
            raise
        return {"status": "out of memory", "peak_gib": None}
    finally:
        del model, optimizer
        free_memory()


def probe_in_subprocess(shape: str, length: int, variant: str, lora: int, timeout: float, smoke: bool = False, steps: int = 2) -> dict:
    """Run :func:`probe` in a fresh interpreter (this script with --probe); a crash or a timeout is a result too."""
    command = [sys.executable, str(Path(__file__).resolve()), "--probe", str(length), "--shape", shape, "--variants", variant,
               "--lora", str(lora), "--steps", str(steps), *(["--smoke"] if smoke else [])]
    start = time.time()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s", "seconds": round(time.time() - start, 1)}
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if lines:
        return {**json.loads(lines[-1][len(MARK):]), "seconds": round(time.time() - start, 1)}
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    status = "out of memory" if "out of memory" in done.stderr.lower() else f"error (exit {done.returncode}): {last[:200]}"
    return {"status": status, "seconds": round(time.time() - start, 1)}


def climb(ladder: list[int], run_probe, known: dict, time_left, estimate) -> list[tuple[int, dict]]:
    """Probe ``ladder`` upwards until the first failure. ``known``: results already measured (not repeated);
    ``estimate(length, previous)``: expected seconds of a probe; a probe that would not fit ``time_left()`` is recorded
    as not tried. Returns the (length, result) pairs probed or skipped, in order."""
    out, previous = [], None
    for length in ladder:
        if length in known:
            result = known[length]
        else:
            expected = estimate(length, previous)
            if expected is not None and expected > time_left():
                out.append((length, {"status": "not tried: time budget", "expected_s": round(expected)}))
                break
            result = run_probe(length)
            out.append((length, result))
        if result["status"] != "ok":
            break
        previous = (length, result)
    return out


def longest(rows: list[dict], shape: str, lora: bool, variant: str) -> int | None:
    ok = [r["length"] for r in rows if r["shape"] == shape and bool(r["lora"]) == lora and r["variant"] == variant and r["status"] == "ok"]
    return max(ok) if ok else None


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tinyllama-1.1b", choices=sorted(SHAPES))
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank on q,k,v,o (0: full fine-tuning)")
    parser.add_argument("--ladder", default="96k,128k,192k,256k", help="lengths to probe, upwards (add 384k when time allows)")
    parser.add_argument("--variants", default="plain,ropekit")
    parser.add_argument("--probe-timeout", type=float, default=540, help="seconds one probe may take")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per probe (1 only where two do not fit a window: "
                        "with LoRA the optimizer state is a few MB, so the first step already reaches the peak)")
    parser.add_argument("--resume", action="store_true", help="keep the rows of an existing results file; skip probes it has")
    parser.add_argument("--probe", type=int, default=None, help=argparse.SUPPRESS)  # internal: one probe, in this process
    add_common_args(parser)
    args = parser.parse_args(argv)
    setup(args)
    if args.probe is not None:
        result = probe(args.shape, args.probe, args.variants, args.lora, args.steps)
        print(MARK + json.dumps(result), flush=True)
        return None
    if args.smoke:  # the tiny shape stands in for the 1.1B (or, with --lora, the 6.7B) one; one short rung
        args.shape = "llama2-7b" if args.lora else "tinyllama-1.1b"
        args.ladder, args.probe_timeout, args.variants = "128", 120, "plain,ropekit"
    shape = "tiny" if args.smoke else args.shape
    ladder = parse_lengths(args.ladder)
    results = Results("max_length", json_path(args, "max_length"), smoke=args.smoke, keep_rows=args.resume,
                      stand_ins={args.shape: "tiny"} if args.smoke else None)
    budget = Budget(args.budget)
    config = config_for(shape)
    what = f"{shape}{f' LoRA r={args.lora}' if args.lora else ' full fine-tuning'}"
    print(f"longest trainable sequence, {what}, {args.steps} optimizer step(s), batch 1; {device_name()}; ladder "
          f"{', '.join(format_length(n) for n in ladder)}", flush=True)

    def estimate(length: int, previous) -> float | None:
        if previous is None:
            return None
        prev_length, prev = previous
        if "seconds" not in prev:
            return None
        return prev["seconds"] * (length * model_flops_per_token(config, length)) / (prev_length * model_flops_per_token(config, prev_length))

    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        known = {r["length"]: r for r in results.rows if r.get("shape") == args.shape and r.get("lora") == args.lora
                 and r.get("variant") == variant and (r["status"] == "ok" or r["status"] == "out of memory")}

        def run_probe(length: int, variant=variant) -> dict:
            result = probe_in_subprocess(shape, length, variant, args.lora, min(args.probe_timeout, max(1.0, budget.left())), args.smoke, args.steps)
            row = {"shape": args.shape, "lora": args.lora, "variant": variant, "length": length, "steps": args.steps, **result}
            results.replace({"shape": args.shape, "lora": args.lora, "variant": variant, "length": length}, row)
            memory = f", peak {result['peak_gib']:.1f} GiB" if result.get("peak_gib") else ""
            print(f"  {variant:<8} {format_length(length):>6}: {result['status']}{memory} ({result.get('seconds', 0):.0f} s)", flush=True)
            return result

        # rungs measured in earlier calls count: the climb continues above them and stops below a known failure
        for length, result in climb(sorted(set(ladder) | set(known)), run_probe, known, budget.left, estimate):
            if result["status"].startswith("not tried"):
                results.replace({"shape": args.shape, "lora": args.lora, "variant": variant, "length": length},
                                {"shape": args.shape, "lora": args.lora, "variant": variant, "length": length, **result})
                print(f"  {variant:<8} {format_length(length):>6}: {result['status']} (expected {result['expected_s']} s)", flush=True)
        best = longest(results.rows, args.shape, bool(args.lora), variant)
        print(f"{variant:<8} longest: {format_length(best) if best else 'none'}", flush=True)

    summary = {f"{key}_{variant}": longest(results.rows, shape_name, lora, variant)
               for (shape_name, lora), key in SUMMARY_KEYS.items() for variant in ("plain", "ropekit")}
    if args.smoke:  # one stand-in ran; copy its figures to the other keys so the whole schema is exercised
        ran = SUMMARY_KEYS[(args.shape, bool(args.lora))]
        for key in set(SUMMARY_KEYS.values()) - {ran}:
            summary.update({f"{key}_{v}": summary[f"{ran}_{v}"] for v in ("plain", "ropekit")})
    summary["ladder"] = ladder
    summary["goal_tokens"] = 262144
    results.summarize(summary)
    results.done()
    return results.data


if __name__ == "__main__":
    main()
