"""Cost of the entropy-aware logit scale: the same model with and without it (EABF vs ABF), timed side by side.

    python benchmarks/logit_scale_overhead.py                      # one GPU: TinyLlama-1.1B shape, bf16, 16K and 32K
    python benchmarks/logit_scale_overhead.py                      # CPU: SmolLM2-135M shape, prefill/decode 2K, attention 2K-8K
    python benchmarks/logit_scale_overhead.py --smoke --json /tmp/x.json   # tiny shapes, seconds on a CPU

What is compared. EABF = ABF's θ (base × 50) + the per-position logit scale t = max(1, ln(p+1)/ln c) on the query
inside attention. Switching the scale off in an EABF model (scale_off: the config's attention plan emptied) leaves
exactly ABF — same weights, same θ, same attention wrapper; tests/test_benchmarks.py checks the logits — so the
difference between the two is the scale's cost and nothing else.

Rows (--kinds, run in this order; random weights of --shape, batch 1):
  step       one training step as `ropekit train` runs it by default (train_throughput.Variant "ropekit-default":
             liger-kernel when installed on a GPU else the chunked loss, gradient checkpointing on, fused AdamW,
             gradients clipped, bf16 autocast over fp32 weights) at --step-lengths (GPU 16K, 32K; CPU none).
             summary.max_step_ratio, goal ≤ 1.01.
  prefill    one forward of --prefill-lengths tokens into an empty KV cache, logits of the last position only (what
             generate's prefill computes); bf16 weights on a GPU, no grad. summary.max_prefill_ratio.
  decode     --decode-tokens single-token forwards (greedy) on a KV cache holding --decode-lengths tokens of context,
             prefilled once and set back to that context after every timed call. summary.max_decode_ratio.
  attention  causal SDPA forward+backward on random q/k/v vs the same after ropekit's scale_query: the op alone
             (GPU 32 heads × 128, 16K and 32K; CPU SmolLM2's 9 × 64, kv 3). summary.max_attention_ratio.
Timing: --warmup calls and one more that sizes a round, then --repeats interleaved rounds (ABF, EABF, then EABF,
ABF; _common.measure_interleaved). GPU defaults: 10 rounds for a step (0.7-2 s each), 20 for the others; CPU and
--smoke: 3. A row's ratio is EABF ÷ ABF time, the median of the per-round ratios, with a bootstrap 95% interval ("ratio_ci"), min/max ("ratio_range") and
the number of rounds ("repeats"); "resolves_1pct" says whether that interval is narrower than 1%. The summary's
max_*_ratio are the worst medians over lengths, max_step_ratio_hi the worst upper bound.
--budget: a row starts only when its expected time fits in what is left (warm-up and rounds, from the row's FLOPs at
the rate the rows of its kind have shown, or a guess for the first: 35% of the matmul peak measured at the start,
decode at 5 ms a token on a GPU), and its rounds stop at the budget; a row that does not fit is recorded as skipped.
Each row is in the results file as soon as it is measured, and while it runs, after every round.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
from _common import (SHAPES, Budget, Results, add_common_args, config_for, device_name, free_memory, is_oom, json_path, matmul_peak,
                     measure_interleaved, model_flops_per_token, on_gpu, paired_ratio, peak_memory_gib, reset_peak_memory, setup, stats)

from ropekit.methods.runtime import scale_query
from ropekit.lengths import parse_lengths

KINDS = ("step", "prefill", "decode", "attention")


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


def pair(eabf, abf_model) -> dict:
    """The two callables of a row: ``abf`` runs ``eabf`` with the scale switched off on ``abf_model``."""
    def abf():
        with scale_off(abf_model):
            eabf()
    return {"abf": abf, "eabf": eabf}


def step_pair(shape: str, length: int) -> tuple[dict, object]:
    from train_throughput import HEADLINE, Variant

    variant = Variant("ropekit-default", HEADLINE["ropekit-default"], config_for(shape), length)
    return pair(variant.step, variant.model), variant


def inference_model(shape: str, target: int):
    import ropekit
    from transformers import AutoModelForCausalLM

    config = config_for(shape)
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if on_gpu() else torch.float32, attn_implementation="sdpa")
    ropekit.extend(model, "eabf", target_length=max(target, 4 * config.max_position_embeddings))
    return model.eval()


def _ids(model, length: int):
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))
    return ids.to(next(model.parameters()).device)


def prefill_pair(model, length: int) -> dict:
    ids = _ids(model, length)

    @torch.no_grad()
    def prefill():
        model(input_ids=ids, use_cache=True, logits_to_keep=1)

    return pair(prefill, model)


def decode_pair(model, context: int, tokens: int) -> dict:
    """Decoding from a cache of ``context`` tokens. DynamicCache grows by concatenation (new tensors), so the
    prefilled layers' attributes, saved once, put the cache back to the context without a copy."""
    with torch.no_grad():
        out = model(input_ids=_ids(model, context), use_cache=True, logits_to_keep=1)
    cache, first = out.past_key_values, out.logits[:, -1:].argmax(-1)
    saved = [dict(vars(layer)) for layer in cache.layers]

    @torch.no_grad()
    def decode():
        token = first
        for _ in range(tokens):
            token = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        for layer, state in zip(cache.layers, saved):
            layer.__dict__.update(state)

    decode()
    if cache.get_seq_length() != context:
        raise RuntimeError(f"the KV cache did not go back to {context} tokens (it holds {cache.get_seq_length()})")
    return pair(decode, model)


def attention_pair(length: int, heads: int, kv_heads: int, head_dim: int, native: int) -> dict:
    device, dtype = ("cuda", torch.bfloat16) if on_gpu() else ("cpu", torch.float32)
    q = torch.randn(1, heads, length, head_dim, dtype=dtype, device=device, requires_grad=True)
    k = torch.randn(1, kv_heads, length, head_dim, dtype=dtype, device=device, requires_grad=True)
    v = torch.randn(1, kv_heads, length, head_dim, dtype=dtype, device=device, requires_grad=True)
    positions = torch.arange(length, device=device)[None]
    grad = torch.randn(1, heads, length, head_dim, dtype=dtype, device=device)
    gqa = heads != kv_heads

    def abf():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa).backward(grad)

    def eabf():
        F.scaled_dot_product_attention(scale_query(q, positions, native), k, v, is_causal=True, enable_gqa=gqa).backward(grad)

    return {"abf": abf, "eabf": eabf}


def row_flops(kind: str, length: int, args) -> float:
    """FLOPs of one call of a row (one variant), for the budget's estimate only."""
    config = config_for(args.shape)
    if kind == "step":  # gradient checkpointing recomputes the forward: 4/3 of the model FLOPs
        return model_flops_per_token(config, length) * length * 4 / 3
    if kind == "prefill":
        return model_flops_per_token(config, length) * length / 3
    if kind == "decode":
        params = 2 * (model_flops_per_token(config, 0) / 6)  # 2·N per token, N with the embedding matrix
        return args.decode_tokens * (params + 4 * config.num_hidden_layers * length * config.hidden_size)
    return 3.5 * 2 * length * length * args.heads * args.head_dim


class Planner:
    """Seconds a row is expected to take, from the rate (FLOP/s) the finished rows of its kind have shown."""

    def __init__(self, peak: float, args):
        self.peak, self.args, self.rates = peak, args, {}

    def expected(self, kind: str, length: int, repeats: int) -> float:
        flops = row_flops(kind, length, self.args)
        rate = self.rates.get(kind) or 0.35 * self.peak
        guess = flops / rate
        setup = 5.0 if on_gpu() else 0.5
        if kind == "decode":  # the context is prefilled first; the tokens themselves are launch-bound on a GPU
            setup += row_flops("prefill", length, self.args) / (self.rates.get("prefill") or 0.35 * self.peak)
            if kind not in self.rates and on_gpu():
                guess = max(guess, 0.005 * self.args.decode_tokens)
        return 2 * (self.args.warmup + 1 + repeats) * guess + setup  # + the call that sizes a round

    def learn(self, kind: str, length: int, seconds_per_call: float) -> None:
        self.rates[kind] = row_flops(kind, length, self.args) / max(seconds_per_call, 1e-9)


def measure_row(kind: str, length: int, build, repeats: int, args, results, budget, planner: Planner, extra: dict) -> dict:
    """Build a row's pair, warm it up, time it in interleaved rounds; the row is written before the first round,
    after each round and at the end."""
    base = {"kind": kind, "length": length, **extra}
    expected = planner.expected(kind, length, repeats)
    if expected > budget.left():
        return results.add({**base, "status": f"skipped: time budget (expected {expected:.0f} s, {budget.left():.0f} s left)"})
    fns = holder = row = None
    try:
        reset_peak_memory()
        fns, holder = build()
        for _ in range(args.warmup):
            for fn in fns.values():
                fn()
        start = time.perf_counter()
        for fn in fns.values():
            fn()
        if on_gpu():
            torch.cuda.synchronize()
        round_s = time.perf_counter() - start
        planner.learn(kind, length, round_s / 2)
        min_rounds = min(3, repeats)
        if budget.left() < min_rounds * round_s:
            return results.add({**base, "status": f"skipped: time budget (a round takes {round_s:.1f} s, {budget.left():.0f} s left)"})
        row = results.add({**base, "status": "partial: 0 rounds", "repeats": 0})

        def record(times):
            row.update(status=f"partial: {len(times['eabf'])} rounds", repeats=len(times["eabf"]),
                       abf=stats(list(times["abf"])), eabf=stats(list(times["eabf"])))
            results.write()

        timed = measure_interleaved(fns, repeats=repeats, warmup=0, deadline=time.time() + budget.left(), on_round=record)
    except Exception as err:  # an out-of-memory (or other) failure is a result, not the end of the run
        status = "out of memory" if is_oom(err) else f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        if row is None:
            return results.add({**base, "status": status})
        row["status"] = f"{status} (after {row['repeats']} rounds)"
        results.write()
        return row
    finally:
        fns = holder = None
        if kind == "step":  # liger's RoPE is a module global the step set; the inference rows run transformers' own
            from train_throughput import ORIGINAL_ROPE, modeling_llama

            modeling_llama.apply_rotary_pos_emb = ORIGINAL_ROPE
        free_memory()
    ratio = paired_ratio(timed["eabf"]["times_s"], timed["abf"]["times_s"])
    row.update(status="ok" if ratio["n"] >= min_rounds else f"partial: {ratio['n']} rounds (time budget)", ratio=ratio["median"],
               ratio_ci=[ratio["lo"], ratio["hi"]], ratio_range=[ratio["min"], ratio["max"]], repeats=ratio["n"],
               resolves_1pct=ratio["hi"] - ratio["lo"] < 0.01, peak_gib=peak_memory_gib())
    results.write()
    print(f"  {kind:<9} {length:>7}: abf {row['abf']['median_s'] * 1e3:9.2f} ms  eabf {row['eabf']['median_s'] * 1e3:9.2f} ms  "
          f"ratio {ratio['median']:.4f} [{ratio['lo']:.4f}, {ratio['hi']:.4f}] over {ratio['n']} rounds", flush=True)
    return row


def summarize(rows: list[dict], repeats: dict) -> dict:
    summary = {"repeats": repeats, "goal_max_step_ratio": 1.01}
    for kind in KINDS:
        done = [r for r in rows if r["kind"] == kind and r["status"] == "ok"]
        summary[f"max_{kind}_ratio"] = max((r["ratio"] for r in done), default=None)
        summary[f"{kind}_ratios"] = {str(r["length"]): r["ratio"] for r in done}
        if kind == "step":
            summary["max_step_ratio_hi"] = max((r["ratio_ci"][1] for r in done), default=None)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"rows to measure, from {', '.join(KINDS)}")
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES), help="model shape (GPU default tinyllama-1.1b, CPU smollm2-135m)")
    parser.add_argument("--step-lengths", default=None, help="training-step lengths (GPU default 16k,32k; CPU none)")
    parser.add_argument("--prefill-lengths", default=None, help="prefill lengths (GPU default 16k,32k; CPU 2k)")
    parser.add_argument("--decode-lengths", default=None, help="decode context lengths (GPU default 16k,32k; CPU 2k)")
    parser.add_argument("--decode-tokens", type=int, default=16, help="single-token steps per timed decode call")
    parser.add_argument("--lengths", default=None, help="attention-only lengths (GPU default 16k,32k; CPU 2k,4k,8k)")
    parser.add_argument("--heads", type=int, default=None, help="attention rows: query heads (GPU default 32, CPU 9)")
    parser.add_argument("--kv-heads", type=int, default=None, help="attention rows: key/value heads (GPU default 32, CPU 3)")
    parser.add_argument("--head-dim", type=int, default=None, help="attention rows: head dimension (GPU default 128, CPU 64)")
    parser.add_argument("--native", type=int, default=None, help="c in the scale for the attention rows (default 1/4 of the shortest length)")
    parser.add_argument("--repeats", default=None, help="interleaved rounds: N for every kind, or KIND=N,… for some "
                        "(GPU default: step 10, the others 20; CPU 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per variant before the one that sizes a round")
    add_common_args(parser)
    args = parser.parse_args(argv)
    setup(args)
    gpu = on_gpu()
    if args.smoke:
        args.shape, args.step_lengths, args.prefill_lengths, args.decode_lengths, args.lengths = "tiny", "64,128", "64,128", "128", "64,128"
        args.heads, args.kv_heads, args.head_dim, args.repeats, args.warmup, args.decode_tokens = 4, 2, 16, "3", 1, 4
    args.shape = args.shape or ("tinyllama-1.1b" if gpu else "smollm2-135m")
    args.heads, args.kv_heads, args.head_dim = args.heads or (32 if gpu else 9), args.kv_heads or (32 if gpu else 3), args.head_dim or (128 if gpu else 64)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if set(kinds) - set(KINDS):
        raise SystemExit(f"unknown kind(s) {', '.join(sorted(set(kinds) - set(KINDS)))}: use {', '.join(KINDS)}")

    def lengths(value, gpu_default, cpu_default):
        value = value or (gpu_default if gpu else cpu_default)
        return [] if value == "none" else parse_lengths(value)

    plan = {"step": lengths(args.step_lengths, "16k,32k", "none"), "prefill": lengths(args.prefill_lengths, "16k,32k", "2k"),
            "decode": lengths(args.decode_lengths, "16k,32k", "2k"), "attention": lengths(args.lengths, "16k,32k", "2k,4k,8k")}
    plan = {kind: plan[kind] for kind in kinds}
    repeats = {kind: (10 if kind == "step" else 20) if gpu else 3 for kind in kinds}
    for part in (args.repeats or "").split(","):
        kind, _, count = part.rpartition("=")
        if count.strip():
            repeats.update({k: int(count) for k in ([kind.strip()] if kind else kinds) if k in repeats})
    native = args.native or max(2, min(plan.get("attention") or [8]) // 4)
    results = Results("logit_scale_overhead", json_path(args, "logit_scale_overhead"), smoke=args.smoke)
    budget = Budget(args.budget)
    peak = matmul_peak(size=256 if args.smoke else None)
    results.set("peak_tflops", peak / 1e12)
    results.set("shape", args.shape)
    print(f"logit-scale overhead (EABF ÷ ABF), {args.shape} (random weights); {device_name()}; {'bf16' if gpu else 'fp32'}; "
          f"warm-up {args.warmup}, interleaved rounds {repeats}", flush=True)
    planner = Planner(peak, args)
    inference = {}  # one bf16 model for the prefill and decode rows, built by the first row that runs

    def model():
        if not inference:
            inference["model"] = inference_model(args.shape, max(max(v) for k, v in plan.items() if k != "attention" and v))
        return inference["model"]

    last_inference = max((i for i, k in enumerate(plan) if k in ("prefill", "decode")), default=-1)
    for index, (kind, kind_lengths) in enumerate(plan.items()):
        for length in kind_lengths:
            if kind == "step":
                build, extra = (lambda n=length: step_pair(args.shape, n)), {"shape": args.shape}
            elif kind == "prefill":
                build, extra = (lambda n=length: (prefill_pair(model(), n), None)), {"shape": args.shape}
            elif kind == "decode":
                build, extra = (lambda n=length: (decode_pair(model(), n, args.decode_tokens), None)), {"shape": args.shape, "tokens": args.decode_tokens}
            else:
                build = lambda n=length: (attention_pair(n, args.heads, args.kv_heads, args.head_dim, native), None)  # noqa: E731
                extra = {"heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim, "native": native}
            row = measure_row(kind, length, build, repeats[kind], args, results, budget, planner, extra)
            if not row["status"].startswith(("ok", "partial")):
                print(f"  {kind:<9} {length:>7}: {row['status']}", flush=True)
            results.summarize(summarize(results.rows, repeats))
        if index == last_inference:
            inference.clear()
            free_memory()
    results.summarize(summarize(results.rows, repeats))
    results.done()
    return results.data


if __name__ == "__main__":
    main()
