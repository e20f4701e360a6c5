"""Training throughput: plain transformers vs ropekit's training step, each knob's share, same model, same run.

    python benchmarks/train_throughput.py                               # one GPU: TinyLlama-1.1B shape, 16K and 32K
    python benchmarks/train_throughput.py --shape smollm2-135m --lengths 2k --steps 2 --warmup 1   # CPU-sized
    python benchmarks/train_throughput.py --smoke --json /tmp/x.json    # tiny shapes, seconds on a CPU

Every variant: batch 1, random weights (fp32 master weights, bf16 autocast on a GPU), AdamW (fused on a GPU),
warm-up steps then the median of --steps timed steps with the spread. Knobs, each measured alone on top of plain:
  plain          transformers as shipped: SDPA, gradient checkpointing, fused AdamW, loss from full logits
  +eabf          the model extended with EABF (logit scale in layers ≥ 2): the method's own cost
  +chunked       loss from hidden states in chunks (ropekit.memory; full logits never exist)
  +tiled         decoder MLPs in 8K-token tiles (ropekit.memory; a memory saver, exact)
  +liger         liger-kernel fused linear+cross-entropy, RMSNorm, SwiGLU, RoPE (GPU with liger-kernel only)
  +no-ckpt       gradient checkpointing off (out of memory is recorded, not fatal)
  +compile       each decoder layer under torch.compile
  +packing       the same tokens as 4 packed documents with position resets (block-diagonal attention): shows the
                 cost of the packed path; its data-dependent gain (no padding) does not exist on random tokens
  +flash         flash-attention 2 (when installed)
then two combinations, both with EABF:
  ropekit        what `ropekit train` does on this device today (liger when installed on a GPU, else the chunked
                 loss; gradient checkpointing on)
  best           every knob that beat plain by more than 2% in this run (packing excluded: it changes the work)
MFU counts model FLOPs as the anchors do (6·N_non-embedding + 6·V·d + 3.5 × causal attention forward per token,
recomputation not counted) over a bf16 8192³ matmul peak measured at the start of the same run.
summary: ratio_16k / ratio_32k (best ÷ plain tokens/s), mfu_16k / mfu_32k (best), and the same for `ropekit`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util

import torch
from _common import (SHAPES, Budget, Results, add_common_args, config_for, enable_checkpointing, device_name, free_memory, is_oom, json_path,
                     matmul_peak, measure, model_flops_per_token, on_gpu, peak_memory_gib, reset_peak_memory, setup)

from ropekit.lengths import format_length, parse_lengths

KNOBS = ("eabf", "chunked", "tiled", "liger", "no-ckpt", "compile", "packing", "flash")
NOMINAL = {"16k": 16384, "32k": 32768}  # the summary's lengths (a smoke run maps them to its stand-ins)


def available(knob: str) -> str | None:
    """Why a knob cannot run here, or None."""
    if knob == "liger" and (not on_gpu() or importlib.util.find_spec("liger_kernel") is None):
        return "needs a GPU and liger-kernel"
    if knob == "flash" and (not on_gpu() or importlib.util.find_spec("flash_attn") is None):
        return "needs a GPU and flash-attn"
    if knob == "compile" and not on_gpu():
        return "torch.compile is measured on a GPU only (minutes of compilation on a CPU)"
    return None


@contextlib.contextmanager
def liger_restored():
    """liger-kernel patches transformers' Llama module globally (RoPE, RMSNorm, MLP classes); put them back afterwards
    so the variants measured later in this process run plain transformers again."""
    from transformers.models.llama import modeling_llama

    saved = {name: getattr(modeling_llama, name) for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP")}
    forward = modeling_llama.LlamaForCausalLM.forward
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(modeling_llama, name, value)
        modeling_llama.LlamaForCausalLM.forward = forward


def ropekit_default_knobs() -> set[str]:
    """The knobs `ropekit train` turns on by itself on this device (see ropekit.train: liger auto, else chunked loss)."""
    return {"eabf", "liger"} if available("liger") is None else {"eabf", "chunked"}


def build_step(config, knobs: set[str], length: int):
    """A training step closure for a fresh random model with ``knobs``; returns (step, cleanup)."""
    import ropekit
    from transformers import AutoModelForCausalLM

    from ropekit.memory import make_chunked_loss, tile_mlp

    device = "cuda" if on_gpu() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.float32,
                                                 attn_implementation="flash_attention_2" if "flash" in knobs else "sdpa")
    if "eabf" in knobs:
        ropekit.extend(model, "eabf", target_length=max(length, 4 * config.max_position_embeddings))
    if "liger" in knobs:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model)  # what the transformers Trainer does with use_liger_kernel=True
    if "tiled" in knobs:
        tile_mlp(model, 8192)
    if "no-ckpt" not in knobs:
        enable_checkpointing(model)
    if "compile" in knobs:
        for layer in model.model.layers:
            layer.compile()
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=on_gpu())
    loss_fn = make_chunked_loss(model) if "chunked" in knobs and "liger" not in knobs else None
    dtype = torch.bfloat16 if on_gpu() else torch.float32
    ids = torch.randint(0, config.vocab_size, (1, length), device=device)
    positions = torch.arange(length, device=device)[None]
    if "packing" in knobs:  # four documents in the row, positions restarting at each (transformers masks per document)
        positions = positions % -(-length // 4)

    def step():
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            if loss_fn is None:
                loss = model(input_ids=ids, position_ids=positions, labels=ids).loss
            else:
                loss = loss_fn(model(input_ids=ids, position_ids=positions, output_hidden_states=True, logits_to_keep=1), ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def cleanup():
        nonlocal model, optimizer
        del model, optimizer
        free_memory()

    return step, cleanup


def run_variant(name: str, knobs: set[str], config, length: int, steps: int, warmup: int, flops: float, peak: float) -> dict:
    row = {"variant": name, "length": length, "knobs": sorted(knobs)}
    context = liger_restored() if "liger" in knobs else contextlib.nullcontext()
    with context:
        step = cleanup = None
        try:
            step, cleanup = build_step(config, knobs, length)
            reset_peak_memory()
            t = measure(step, repeats=steps, warmup=warmup)
        except Exception as err:  # out of memory, or a knob that fails here (e.g. a compiler error): a result, not the end
            return {**row, "status": "out of memory" if is_oom(err) else f"error: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
        finally:
            if cleanup:
                cleanup()
    speed = length / t["median_s"]
    return {**row, "status": "ok", "step": t, "tokens_per_s": speed, "mfu": flops * speed / peak, "peak_gib": peak_memory_gib()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES), help="GPU default tinyllama-1.1b, CPU smollm2-135m")
    parser.add_argument("--lengths", default=None, help="GPU default 16k,32k; CPU 2k")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", default="plain,+eabf,+chunked,+tiled,+liger,+no-ckpt,+compile,+packing,+flash,ropekit,best")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of an existing results file for other lengths (e.g. 16K measured in an earlier call)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    setup(args)
    gpu = on_gpu()
    nominal = dict(NOMINAL)
    if args.smoke:
        args.shape, args.lengths, args.steps, args.warmup = "tiny", "128,256", 2, 1
        nominal = {"16k": 128, "32k": 256}
    shape = args.shape or ("tinyllama-1.1b" if gpu else "smollm2-135m")
    lengths = parse_lengths(args.lengths or ("16k,32k" if gpu else "2k"))
    config = config_for(shape)
    results = Results("train_throughput", json_path(args, "train_throughput"), smoke=args.smoke,
                      stand_ins=nominal if args.smoke else None, keep_rows=args.resume)
    results.set("rows", [r for r in results.rows if r["length"] not in lengths])  # lengths measured now are measured anew
    budget = Budget(args.budget)
    peak = matmul_peak(size=256 if args.smoke else None)
    results.set("peak_tflops", peak / 1e12)
    print(f"training step, {shape} (random weights), batch 1; {device_name()}; matmul peak {peak / 1e12:.3g} TFLOP/s; "
          f"warm-up {args.warmup}, median of {args.steps}")
    print(f"{'length':>7} {'variant':<9} {'step s':>8} {'spread':>7} {'tok/s':>9} {'MFU':>6} {'ratio':>6} {'GiB':>6}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for length in lengths:
        flops = model_flops_per_token(config, length)
        measured: dict[str, dict] = {}
        for variant in variants:
            if variant == "plain":
                knobs = set()
            elif variant == "ropekit":
                knobs = ropekit_default_knobs()
            elif variant == "best":
                plain = measured.get("plain", {}).get("tokens_per_s")
                knobs = {"eabf"} | {k for k in KNOBS if k not in ("eabf", "packing") and plain and
                                    measured.get(f"+{k}", {}).get("tokens_per_s", 0) > 1.02 * plain}
                if "liger" in knobs:
                    knobs.discard("chunked")  # liger's fused linear+cross-entropy already avoids the logits
            elif variant.startswith("+") and variant[1:] in KNOBS:
                knobs = {variant[1:]}
            else:
                raise SystemExit(f"unknown variant {variant!r}: use plain, ropekit, best or +KNOB with KNOB one of {', '.join(KNOBS)}")
            why = next((available(k) for k in knobs if available(k)), None)
            if why or budget.left() <= 0:
                row = results.add({"variant": variant, "length": length, "knobs": sorted(knobs),
                                   "status": f"skipped: {why or 'time budget'}"})
                print(f"{format_length(length):>7} {variant:<9} {row['status']}", flush=True)
                continue
            row = run_variant(variant, knobs, config, length, args.steps, args.warmup, flops, peak)
            if row["status"] == "ok":
                plain = row if variant == "plain" else measured.get("plain", {})
                row["ratio"] = row["tokens_per_s"] / plain["tokens_per_s"] if plain.get("status") == "ok" else None
                print(f"{format_length(length):>7} {variant:<9} {row['step']['median_s']:>8.3f} {row['step']['spread']:>7.1%} "
                      f"{row['tokens_per_s']:>9.0f} {row['mfu']:>6.1%} {row['ratio'] or float('nan'):>6.2f} "
                      f"{row['peak_gib'] if row['peak_gib'] is not None else float('nan'):>6.1f}", flush=True)
            else:
                print(f"{format_length(length):>7} {variant:<9} {row['status']}", flush=True)
            measured[variant] = row
            results.add(row)

    def figure(variant: str, key: str, length: int):
        row = next((r for r in results.rows if r["variant"] == variant and r["length"] == length and r["status"] == "ok"), None)
        return None if row is None else row.get(key)

    summary = {}
    for tag, length in nominal.items():
        summary[f"ratio_{tag}"], summary[f"mfu_{tag}"] = figure("best", "ratio", length), figure("best", "mfu", length)
        summary[f"ropekit_ratio_{tag}"], summary[f"ropekit_mfu_{tag}"] = figure("ropekit", "ratio", length), figure("ropekit", "mfu", length)
        best = next((r for r in results.rows if r["variant"] == "best" and r["length"] == length), None)
        summary[f"best_knobs_{tag}"] = best["knobs"] if best else None
    results.summarize({**summary, "peak_tflops": peak / 1e12, "goal_ratio": 1.5, "goal_mfu": 0.55})
    results.done()
    return results.data


if __name__ == "__main__":
    main()
