"""The GPU runbook as a queue: every device call of issues 14 and 15, its estimated minutes on one H100, and which
are still to run (read from the committed results).

    python benchmarks/gpu/plan.py               # the whole plan with estimates
    python benchmarks/gpu/plan.py --next        # only the calls still to run, in order, with the exact commands

Estimates come from FLOPs and the measured anchors (shared/anchors.md), never from a GPU run of this project:
  * training: the anchor's hand-made EABF run — SmolLM2-135M, 100 samples × 32K tokens × 2 epochs in ≈ 130 s on one
    H100 — gives an effective rate in model FLOPs/s (6·N + 6·V·d + 3.5 × causal attention per token, the MFU
    convention), which prices every other row by its tokens × FLOPs per token at its training length;
  * evaluation forwards: the same effective rate applied to forward FLOPs (2·N + 2·L·S·d per token) — conservative,
    since a forward pays no recomputation or optimizer; Self-Extend runs its own fp32 attention (two full S×S logit
    matrices per layer), priced at FP32_RATE plus its memory passes;
  * CPU work on the GPU machine, measured here on 2 CPU cores (CPU time): KV-retrieval and LongChat-Lines prompts
    cost ≈ 0.5 s and 0.7 s per 64K sample (linear in length; paid by every row),
    synthetic 32K conversations ≈ 0.11 s each, tokenising the Shakespeare corpus ≈ 4 s;
  * fixed costs per call: start-up and imports, and converting the GGUF to safetensors (first call on a machine).
Issue 14's benchmarks are priced from the anchors' plain-HF step times (TinyLlama 26.4K tok/s at 16K, 18.9K at
32K, ≈ 40% MFU) extrapolated by FLOPs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

from _common import config_for, model_flops_per_token  # noqa: E402

CALL_LIMIT_S = 600  # one device command
TRAIN_ONLY_LIMIT_S = 570  # study.sh stops its training at this (from the call's start)
PLAN_LIMIT_S = 330  # several rows share a call only while its estimate stays under this (margin for wrong estimates)
ROW_LIMIT_S = 420  # one row trains and evaluates in one call while its estimate stays under this; else train, then evaluate
WINDOW_S = 900  # one GPU window: the machine's start, the calls and the gaps between them
START_S = 120  # a machine's start
GAP_S = 20  # between two calls on a warm machine (the reply, the next call's transfer)
PEAK = 772e12  # bf16 8192³ matmul on the anchors' H100
ANCHOR_TRAIN_S = 130.0  # SmolLM2 EABF, 100 × 32K × 2 epochs (shared/anchors.md)
FP32_RATE = 40e12  # fp32 matmul FLOP/s assumed for Self-Extend's logits (no TF32)
HBM = 3.0e12  # bytes/s
IMPORT_S, CONVERT_S, ROW_LOAD_S, TRAIN_SETUP_S = 15.0, 25.0, 3.0, 10.0
# Measured on one H100 (docs/results.md): cream-yarn-64k's steps of 256 × 8K tokens at micro-batches of one sample ran
# at 27-29K tokens/s, 4× slower than the anchor's rate by FLOPs (eabf-32k's 152 s training matched the FLOPs estimate
# of 151 s). The preset now uses micro-batches of 8; until that is measured, rows trained at 8K are priced at this rate.
NATIVE_TOKENS_PER_S = 28_000.0
KV_64K_S, LINES_64K_S, CHAT_32K_S, SHAKESPEARE_S = 0.5, 0.7, 0.11, 4.0
MERGE_S = 10.0  # LongRecipe's streamed merge of two 135M checkpoints (22 s on 2 shared CPU cores)


def smollm2():
    return config_for("smollm2-135m")


def train_rate() -> float:
    tokens = 100 * 32768 * 2
    return tokens * model_flops_per_token(smollm2(), 32768) / ANCHOR_TRAIN_S


def forward_flops(length: int) -> float:
    """One forward of ``length`` tokens (answer rows only through the output layer, so no V·d term)."""
    c = smollm2()
    flops_per_token = model_flops_per_token(c, length)  # 6·N + 6·V·d + 7·L·S·d
    n_part = (flops_per_token - 6.0 * c.vocab_size * c.hidden_size - 3.5 * c.num_hidden_layers * 2 * length * c.hidden_size) / 3
    return length * (n_part + 2.0 * c.num_hidden_layers * length * c.hidden_size)


def self_extend_forward_s(length: int) -> float:
    c = smollm2()
    heads, head_dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    logits = c.num_hidden_layers * heads * 2 * 2.0 * length * length * head_dim  # near and far logits, full S×S, fp32
    passes = c.num_hidden_layers * heads * length * length * 4 * 10  # ~10 passes over fp32 S×S (where, mask, softmax, …)
    return logits / FP32_RATE + passes / HBM + forward_flops(length) / train_rate()


@dataclass
class Row:
    label: str
    train_s: float
    eval_s: float
    prep_s: float  # CPU work making its evaluation prompts (included in eval_s)
    notes: list = field(default_factory=list)


def estimate_row(preset, run, part) -> Row:
    from ropekit.lengths import parse_length
    from ropekit.training import get_recipe

    lengths = list(part.lengths or preset.lengths)
    tasks = part.tasks or preset.tasks
    rate = train_rate()
    train_s = 0.0
    if run.train:
        options = {**preset.common, **run.options}
        recipe = get_recipe(run.recipe)
        target = parse_length(run.target)
        if run.strategy == "contiguous":
            length, tokens = target, options.get("samples", recipe.samples) * target * options.get("epochs", recipe.epochs)
            data_s = options.get("samples", recipe.samples) * CHAT_32K_S * target / 32768
        else:
            length = 8192
            tokens = options["max_steps"] * options["batch_size"] * length
            data_s = SHAKESPEARE_S
        if run.recipe == "longrecipe":  # + its replay at 8K (68/240 of stage 0's tokens, whole steps) on conversations
            from ropekit.longrecipe import REPLAY_TOKEN_RATIO

            replay_steps = math.ceil(REPLAY_TOKEN_RATIO * options["max_steps"] * parse_length(options["train_length"]) / length)
            tokens += replay_steps * options["batch_size"] * length
            data_s += TRAIN_SETUP_S + replay_steps * options["batch_size"] * CHAT_32K_S * length / 32768 + MERGE_S
        train_s = TRAIN_SETUP_S + data_s + tokens * model_flops_per_token(smollm2(), length) / rate
        if run.strategy != "contiguous":  # priced at the rate measured at 8K, never faster than FLOPs say
            train_s = max(train_s, TRAIN_SETUP_S + data_s + tokens / NATIVE_TOKENS_PER_S)
    per_length = {"passkey": lambda o: o.get("trials", 20), "niah": lambda o: len(o.get("depths") or [0] * 10) * o.get("trials", 1),
                  "kv": lambda o: len(o.get("positions") or [0] * 5) * o.get("trials", 4),
                  "lines": lambda o: len(o.get("positions") or [0] * 5) * o.get("trials", 4), "entropy": lambda o: o.get("documents", 2)}
    forwards = {n: sum(per_length[t](o) for t, o in tasks.items() if t in per_length) for n in lengths}
    windows = tasks.get("ppl", {}).get("windows", 3) if "ppl" in tasks else 0
    if run.method == "dynamic":  # rope depends on the length: one forward per window per length
        for n in lengths:
            forwards[n] += windows
    else:
        forwards[max(lengths)] += windows
    if run.method == "self_extend":
        eval_s = sum(count * self_extend_forward_s(n) for n, count in forwards.items())
    else:
        eval_s = sum(count * forward_flops(n) for n, count in forwards.items()) / rate
    prep_s = 0.0
    for task, per_sample in (("kv", KV_64K_S), ("lines", LINES_64K_S)):
        if task in tasks:
            prep_s += sum(per_length[task](tasks[task]) * per_sample * n / 65536 for n in lengths)
    return Row(run.label, train_s, ROW_LOAD_S + eval_s + prep_s, prep_s)


def study_calls(preset_name: str = "smollm2-64k") -> list[dict]:
    """Each slice's rows packed, in order, into calls estimated at ≤ PLAN_LIMIT_S. A row whose training alone does not
    fit gets two calls on the same warm machine: ``--train-only`` (cut by the time limit at worst: it resumes from its
    last checkpoint), then, less than 30 s later, the rest of its training if any and its evaluation."""
    from ropekit.study import get_preset, preset_slices

    preset = get_preset(preset_name)
    rows = {r.label: r for r in preset.runs}
    fixed = IMPORT_S + CONVERT_S
    calls = []

    def add(part, members, train_only=False, follows=False, train_s=None):
        trained = sum(r.train_s for r in members) if train_s is None else train_s  # the training this call does
        seconds = fixed + (trained if train_only else sum(r.eval_s for r in members) + (trained if not follows or train_s is not None else 0))
        labels = ",".join(r.label for r in members)
        calls.append({"slice": part.name, "rows": members, "seconds": seconds, "train_only": train_only,
                      "command": f"bash benchmarks/gpu/study.sh {part.name} {labels}{' --train-only' if train_only else ''}",
                      "brings_back": ["study-%s.log" % part.name] if train_only else
                      [f"results-{part.name}.json (or partial-{part.name}.json)", f"study-{part.name}.log"],
                      "must_follow_within_30_s": follows})

    for part in preset_slices(preset):
        current: list[Row] = []
        for label in part.labels:
            row = estimate_row(preset, rows[label], part)
            if fixed + row.train_s + row.eval_s > ROW_LIMIT_S and row.train_s > 0:
                if current:
                    add(part, current)
                    current = []
                # the train-only call trains until study.sh's time limit at most; the next call resumes the rest
                first = min(row.train_s, TRAIN_ONLY_LIMIT_S - fixed)
                rest = row.train_s - first
                add(part, [row], train_only=True, train_s=first)
                add(part, [row], follows=True, train_s=rest + TRAIN_SETUP_S if rest > 0 else None)
                continue
            if current and fixed + sum(r.train_s + r.eval_s for r in current + [row]) > PLAN_LIMIT_S:
                add(part, current)
                current = []
            current.append(row)
        if current:
            add(part, current)
    return calls


def plain_step_s(shape: str, length: int) -> float:
    """The anchors' plain-HF step: TinyLlama 26.4K tok/s at 16K, extrapolated by FLOPs (same MFU) to other lengths."""
    flops = model_flops_per_token(config_for(shape), length) * length
    anchor = model_flops_per_token(config_for("tinyllama-1.1b"), 16384) * 16384 / (16384 / 26400)
    return flops / anchor


def perf_calls() -> list[dict]:
    steps = 2 + 5  # warm-up + timed
    build = 10.0
    logit = IMPORT_S + sum(2 * steps * plain_step_s("tinyllama-1.1b", n) + build for n in (16384, 32768, 65536)) + 10
    train = {n: 10 * (steps * plain_step_s("tinyllama-1.1b", n) + build) + 60 for n in (16384, 32768)}  # 10 variants, compile 60 s
    eval_s = IMPORT_S + 2 * 2 * 6 * 20 * forward_flops(32768) / train_rate() + 20
    niah = IMPORT_S + 3 * 6 * sum(10 * forward_flops(n) for n in (3072, 6144, 9216, 12288, 15360, 18432, 21504, 24576, 28672, 32768)) / train_rate()

    calls = [
        {"name": "perf-1", "command": "bash benchmarks/gpu/perf-1.sh", "what": "logit_scale_overhead (EABF vs ABF step at 16K/32K/64K; "
         "attention 8K-64K) + train_throughput at 16K", "seconds": logit + train[16384],
         "brings_back": ["logit_scale_overhead-h100.json", "train_throughput-h100.json", "perf-1.log"]},
        {"name": "perf-2", "command": "bash benchmarks/gpu/perf-2.sh", "what": "train_throughput at 32K (resumes the file) + eval_throughput at 32K",
         "seconds": train[32768] + eval_s, "brings_back": ["train_throughput-h100.json", "eval_throughput-h100.json", "perf-2.log"]},
        {"name": "perf-3", "command": "bash benchmarks/gpu/perf-3.sh", "what": "niah_grid 10 × 10 up to 32K + max_length 1.1B plain (96K, 128K)",
         "seconds": niah + probe_s("tinyllama-1.1b", 0, "plain", 98304) + 30,
         "brings_back": ["niah_grid-h100.json", "max_length-h100.json", "perf-3.log"]},
    ]
    return calls + ladder_calls(len(calls) + 1)


def probe_s(shape: str, lora: int, variant: str, length: int, steps: int = 2) -> float:
    """One max_length probe: a subprocess's start and model build, then ``steps`` steps. LoRA skips the frozen weights'
    gradients (~0.75× the full step); ropekit's offload and tiling are assumed to cost 1.5×."""
    step = plain_step_s(shape, length) * (0.75 if lora else 1.0) * (1.5 if variant == "ropekit" else 1.0)
    return 30 + steps * step


def ladder_calls(first: int) -> list[dict]:
    """The ladders of issue 14 (plain HF's are expected to stop at 96K, one rung above costs an out-of-memory in
    seconds), packed into calls of at most PLAN_LIMIT_S; a probe longer than that gets a call of its own (with one
    optimizer step for 6.7B LoRA at 256K, where two would not fit 10 minutes)."""
    ladders = [("tinyllama-1.1b", 0, "ropekit", (98304, 131072, 196608, 262144)),
               ("llama2-7b", 8, "plain", (98304, 131072)), ("llama2-7b", 8, "ropekit", (98304, 131072, 196608, 262144))]
    calls, number = [], first
    for shape, lora, variant, lengths in ladders:
        group: list[tuple[int, int, float]] = []
        pending = []
        for n in lengths:
            steps = 1 if lora and probe_s(shape, lora, variant, n) > PLAN_LIMIT_S * 1.6 else 2
            pending.append((n, steps, probe_s(shape, lora, variant, n, steps)))
        for n, steps, seconds in pending:
            if group and (sum(x[2] for x in group) + seconds > PLAN_LIMIT_S or steps != group[0][1]):
                calls.append(_ladder_call(number, shape, lora, variant, group))
                number, group = number + 1, []
            group.append((n, steps, seconds))
        if group:
            calls.append(_ladder_call(number, shape, lora, variant, group))
            number += 1
    return calls


def _ladder_call(number: int, shape: str, lora: int, variant: str, group) -> dict:
    from ropekit.lengths import format_length

    ladder = ",".join(format_length(n).lower() for n, _, _ in group)
    steps = group[0][1]
    return {"name": f"perf-{number}", "command": f"bash benchmarks/gpu/perf-max-length.sh {shape} {lora} {variant} {ladder} {steps}",
            "what": f"max_length {shape}{f' LoRA r={lora}' if lora else ''} {variant}: {ladder} ({steps} optimizer step(s))",
            "seconds": IMPORT_S + sum(x[2] for x in group), "brings_back": ["max_length-h100.json", "max_length.log"],
            "probes": [(shape, lora, variant, n) for n, _, _ in group]}


def done_labels(results_dir: Path) -> set[str]:
    labels = set()
    for path in results_dir.glob("*/results.json"):
        labels |= {r["label"] for r in json.loads(path.read_text())["runs"]}
    return labels


def perf_done(results_dir: Path, call: dict) -> bool:
    if "probes" in call:  # a ladder call is done when each of its probes has a definite result (or a rung below failed)
        rows = [r for p in results_dir.glob("max_length-*.json") for r in json.loads(p.read_text())["rows"]]
        def settled(shape, lora, variant, n):
            mine = [r for r in rows if (r["shape"], r["lora"], r["variant"]) == (shape, lora, variant)]
            return any(r["length"] == n and r["status"] in ("ok", "out of memory") for r in mine) or \
                any(r["length"] < n and r["status"] == "out of memory" for r in mine)
        return all(settled(*probe) for probe in call["probes"])
    files = {"perf-1": [("logit_scale_overhead", "max_step_ratio"), ("train_throughput", "ratio_16k")],
             "perf-2": [("train_throughput", "ratio_32k"), ("eval_throughput", "ratio_32k")],
             "perf-3": [("niah_grid", "seconds"), ("max_length", "full_1b_plain")]}
    for benchmark, key in files[call["name"]]:
        found = [json.loads(p.read_text()) for p in results_dir.glob(f"{benchmark}-*.json")]
        if not any(d["summary"].get(key) is not None and not d.get("smoke") for d in found):
            return False
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--next", action="store_true", help="only the calls still to run")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    study = study_calls()
    perf = perf_calls()
    measured = done_labels(ROOT / "docs" / "results" / "smollm2-64k")
    for call in study:
        call["done"] = all(r.label in measured for r in call["rows"])
    for call in perf:
        call["done"] = perf_done(ROOT / "benchmarks" / "results", call)
    plan = {"study": [{**c, "rows": [vars(r) for r in c["rows"]]} for c in study], "perf": perf}
    if args.json:
        print(json.dumps(plan, indent=1))
        return plan
    print(f"Estimates for one H100 from FLOPs and the anchors (training rate {train_rate() / 1e12:.0f} TFLOP/s of model FLOPs, "
          f"{train_rate() / PEAK:.0%} of the bf16 peak). A GPU window has {WINDOW_S // 60} minutes: a start "
          f"(~{START_S // 60} min), then calls of < 10 min, < 30 s apart.\n")
    print("Issue 15 — the study (first call of a window: stage-1.sh, then within 30 s the first study.sh):")
    for i, call in enumerate(study, 1):
        if args.next and call["done"]:
            continue
        rows = ", ".join(f"{r.label} (train {r.train_s:.0f} s, eval {r.eval_s:.0f} s)" for r in call["rows"])
        then = "  ← within 30 s of the previous call (same warm machine: the checkpoint is there)" if call["must_follow_within_30_s"] else ""
        print(f"  S{i:<2} {call['seconds'] / 60:4.1f} min  {'done' if call['done'] else 'to run'}  {call['command']}{then}\n        {rows}")
    print("\nIssue 14 — performance (no model staging; carry .whl and .carry/smollm2-tokenizer):")
    for call in perf:
        if args.next and call["done"]:
            continue
        print(f"  {call['name']:<6} {call['seconds'] / 60:4.1f} min  {'done' if call['done'] else 'to run'}  {call['command']}\n"
              f"         {call['what']}")
    return plan


if __name__ == "__main__":
    main()
