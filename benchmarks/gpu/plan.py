"""The GPU runbook as a queue: every device call of the study and the performance benchmarks, its estimated seconds,
which are still to run (read from the committed results), and the windows they are packed into.

    python benchmarks/gpu/plan.py                       # the whole plan with estimates
    python benchmarks/gpu/plan.py --next                # only the calls still to run, in order, with the exact commands
    python benchmarks/gpu/plan.py --next --budget 860   # … and which of them fit one window of that many device seconds
    python benchmarks/gpu/plan.py --estimate SLICE LABELS   # seconds one study call needs (study.sh refuses what cannot fit)

**Calibration** (measured, never guessed; each constant names its run). One NVIDIA H200, torch 2.11, transformers
5.17, bf16, SDPA, liger-kernel, no gradient checkpointing (docs/results/smollm2-64k/logs/):
  * rows trained at the target length (micro-batch 1): eabf-mix-32k, 6.07M tokens at 32K in 109 s of training
    (55.6K tokens/s), plus 22 s of data preparation, loading and saving; other lengths are priced by model FLOPs;
  * rows trained at the native 8K (micro-batch 8): cream-yarn-64k and pose-yarn-64k, 12.58M tokens in 101 s and 96 s
    (125-131K tokens/s; the same row at micro-batch 1 ran at 28.8K tokens/s on one H100), plus 12 s;
  * evaluation, per row: the headline protocol (passkey 20, NIAH 10 depths, KV middle third at 16K-64K, perplexity
    4K-64K) 23-38 s; the full protocol (six tasks at 4K-64K) 47-55 s; rows are priced by forward FLOPs scaled to these;
  * fixed costs: a machine's start 30 s; the first study call of a machine (join, verify and convert the GGUF,
    imports) 70 s; every later call 20 s.
The H100 window (one NVIDIA H100, with gradient checkpointing) measured eabf-32k: 5.56M tokens in 136 s of training.
H100 and H200 have the same dense bf16 peak (989 TFLOP/s spec); the H200's measured matmul peak is about 790 TFLOP/s
against the H100's 772. Estimates are the H200's; results are filed per device (the device names every row).
Performance benchmarks (logit scale, training throughput, max length) are priced from the anchors' plain-HF step
times (TinyLlama 26.4K tok/s at 16K, 18.9K at 32K on one H100) extrapolated by FLOPs.
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
PLAN_LIMIT_S = 420  # several rows share a call only while its estimate stays under this (margin for wrong estimates)
ROW_LIMIT_S = 500  # one row trains and evaluates in one call while its estimate stays under this; else train, then evaluate
WINDOW_S = 900  # one GPU window: the machine's start, the calls and the gaps between them
START_S = 30  # a machine's start (measured: first reply 42 s after the call, of which 12 s was the command)
GAP_S = 15  # between two calls on a warm machine (the reply, the next call's transfer)
BUDGET_MARGIN_S = 45  # study.sh ends this long before the budget it is given
PEAK_MEASURED = {"h100": 772e12, "h200": 790e12}  # bf16 8192³ matmul
# Calibration (see the module docstring).
TARGET_TOKENS, TARGET_TRAIN_S, TARGET_LENGTH = 6_066_998, 109.1, 32768  # eabf-mix-32k on one H200
TARGET_SETUP_S = 21.5
NATIVE_TOKENS_PER_S = 125_000.0  # cream-yarn-64k 124.6K, pose-yarn-64k 131.5K tokens/s, micro-batch 8
NATIVE_SETUP_S = 12.0
FULL_PROTOCOL_EVAL_S = 47.0  # pose-yarn-64k: six tasks at 4K-64K, one row
FIRST_CALL_S, LATER_CALL_S = 70.0, 20.0
FP32_RATE = 40e12  # fp32 matmul FLOP/s assumed for Self-Extend's logits (no TF32)
HBM = 4.8e12  # bytes/s (H200)
KV_64K_S, LINES_64K_S, CHAT_32K_S, SHAKESPEARE_S = 0.5, 0.7, 0.11, 4.0
MERGE_S = 10.0  # LongRecipe's streamed merge of two 135M checkpoints (22 s on 2 shared CPU cores)


def smollm2():
    return config_for("smollm2-135m")


def train_rate() -> float:
    """Model FLOP/s of a row trained at its target length, measured (eabf-mix-32k on one H200)."""
    return TARGET_TOKENS * model_flops_per_token(smollm2(), TARGET_LENGTH) / TARGET_TRAIN_S


def _forwards(tasks: dict, lengths: list[int], method: str) -> dict[int, int]:
    per_length = {"passkey": lambda o: o.get("trials", 20), "niah": lambda o: len(o.get("depths") or [0] * 10) * o.get("trials", 1),
                  "kv": lambda o: o.get("trials", 4), "lines": lambda o: o.get("trials", 4), "entropy": lambda o: o.get("documents", 2)}
    forwards = {n: sum(per_length[t](o) for t, o in tasks.items() if t in per_length) for n in lengths}
    windows = tasks.get("ppl", {}).get("windows", 3) if "ppl" in tasks else 0
    if method == "dynamic":  # rope depends on the length: one forward per window per length
        for n in lengths:
            forwards[n] += windows
    else:
        forwards[max(lengths)] += windows
    return forwards


def eval_rate() -> float:
    """Forward FLOP/s of the evaluation, calibrated on one measured row (pose-yarn-64k, the preset's full protocol)."""
    from ropekit.studies.study import get_preset

    preset = get_preset("smollm2-64k")
    flops = sum(count * forward_flops(n) for n, count in _forwards(preset.tasks, list(preset.lengths), "yarn").items())
    return flops / FULL_PROTOCOL_EVAL_S


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
    from ropekit.training.recipes import get_recipe

    lengths = sorted(set(part.lengths or preset.lengths) | {n for ns in (part.task_lengths or {}).values() for n in ns})
    tasks = part.tasks or preset.tasks
    train_s = 0.0
    if run.train:
        options = {**preset.common, **run.options}
        recipe = get_recipe(run.recipe)
        target = parse_length(run.target)
        if run.strategy == "contiguous":
            tokens = options.get("samples", recipe.samples) * target * options.get("epochs", recipe.epochs)
            train_s = TARGET_SETUP_S + tokens * model_flops_per_token(smollm2(), target) / train_rate()
            if options.get("distill", recipe.distill):  # the teacher's forward: about a third of a training step
                train_s += (train_s - TARGET_SETUP_S) / 3
        else:
            length = 8192
            tokens = options["max_steps"] * options["batch_size"] * length
            setup = NATIVE_SETUP_S
            if run.recipe == "longrecipe":  # + its replay at 8K (68/240 of stage 0's tokens, whole steps) on conversations
                from ropekit.training.longrecipe import REPLAY_TOKEN_RATIO

                replay_steps = math.ceil(REPLAY_TOKEN_RATIO * options["max_steps"] * parse_length(options["train_length"]) / length)
                tokens += replay_steps * options["batch_size"] * length
                setup += NATIVE_SETUP_S + replay_steps * options["batch_size"] * CHAT_32K_S * length / 32768 + MERGE_S
            train_s = setup + tokens / NATIVE_TOKENS_PER_S
    forwards = _forwards(tasks, [n for n in lengths if n in set(part.lengths or preset.lengths)] or lengths, run.method)
    if run.method == "self_extend":
        eval_s = sum(count * self_extend_forward_s(n) for n, count in forwards.items())
    else:  # calibrated on a measured row, prompt building included
        eval_s = sum(count * forward_flops(n) for n, count in forwards.items()) / eval_rate()
    prep_s = 0.0
    for task, per_sample in (("kv", KV_64K_S), ("lines", LINES_64K_S)):
        if task in tasks:
            prep_s += sum(tasks[task].get("trials", 4) * per_sample * n / 65536 for n in forwards)
    return Row(run.label, train_s, eval_s, prep_s)


def study_calls(preset_name: str = "smollm2-64k", skip: set[str] = frozenset()) -> list[dict]:
    """Each slice's rows packed, in order, into calls estimated at ≤ PLAN_LIMIT_S (a later call's fixed cost
    included; the first call of a machine adds FIRST_CALL_S - LATER_CALL_S, counted by :func:`windows`). A row whose
    training and evaluation do not fit ROW_LIMIT_S gets two calls on the same warm machine: ``--train-only``, then,
    less than 30 s later, its evaluation."""
    from ropekit.studies.study import get_preset, preset_slices

    preset = get_preset(preset_name)
    rows = {r.label: r for r in preset.runs}
    fixed = LATER_CALL_S
    calls = []

    def add(part, members, train_only=False, follows=False):
        seconds = fixed + sum(r.train_s for r in members if not follows) + (0 if train_only else sum(r.eval_s for r in members))
        labels = ",".join(r.label for r in members)
        calls.append({"slice": part.name, "rows": members, "seconds": seconds, "train_only": train_only,
                      "command": f"bash benchmarks/gpu/study.sh {part.name} {labels}{' --train-only' if train_only else ''} --budget B",
                      "brings_back": ["study-%s.log" % part.name] if train_only else
                      [f"results-{part.name}.json (or partial-{part.name}.json)", f"study-{part.name}.log"],
                      "must_follow_within_30_s": follows})

    for part in preset_slices(preset):
        current: list[Row] = []
        for label in part.labels:
            if label in skip:
                continue
            row = estimate_row(preset, rows[label], part)
            if fixed + row.train_s + row.eval_s > ROW_LIMIT_S and row.train_s > 0:
                if current:
                    add(part, current)
                    current = []
                add(part, [row], train_only=True)
                add(part, [row], follows=True)
                continue
            if current and fixed + sum(r.train_s + r.eval_s for r in current + [row]) > PLAN_LIMIT_S:
                add(part, current)
                current = []
            current.append(row)
        if current:
            add(part, current)
    return calls


def estimate_call(slice_name: str, labels: list[str], preset_name: str = "smollm2-64k") -> float:
    """Seconds of training and evaluation of these rows of one slice (no fixed cost): what study.sh checks against its
    deadline before it starts."""
    from ropekit.studies.study import get_preset, get_slice

    preset = get_preset(preset_name)
    part = get_slice(preset, slice_name)
    rows = {r.label: r for r in preset.runs}
    return sum((lambda r: r.train_s + r.eval_s)(estimate_row(preset, rows[label], part)) for label in labels or part.labels)


# The windows of the runbook, in order: (name, question, [(slice, labels)], what to drop first when minutes run short).
WINDOWS = [
    ("W1", "EABF keeps the model?", [("headline", ("eabf-mix-32k", "none", "eabf-free"))], ("eabf-free",)),
    ("W2", "CREAM reaches 64K?", [("headline", ("cream-yarn-64k",))], ()),
    ("W3", "the scale free, training faster?", [], ()),  # perf-1 (logit_scale_overhead, train_throughput 16K), perf-2
    ("W4", "the seeds' comparisons", [("rest-64k", ("pose-yarn-64k",)), ("finetuned-32k", ("abf-32k",))], ("abf-32k",)),
    ("W5", "the chosen recipe keeps the model?", [("keep", ("eabf-keep-32k",))], ()),
]


def windows(measured: dict[str, dict], budget: float = WINDOW_S) -> list[dict]:
    """Each window with its estimate (start, the first call's staging, every call) and whether it is done."""
    out = []
    for name, question, parts, drop in WINDOWS:
        labels = [label for _, ls in parts for label in ls]
        seconds = START_S + FIRST_CALL_S + sum(estimate_call(s, list(ls)) + LATER_CALL_S + GAP_S for s, ls in parts) if parts else None
        out.append({"name": name, "question": question, "labels": labels, "drop_first": list(drop), "seconds": seconds,
                    "fits": None if seconds is None else seconds <= budget,
                    "done": bool(labels) and all(label in measured for label in labels),
                    "devices": sorted({measured[label]["device"] for label in labels if label in measured})})
    return out


def plain_step_s(shape: str, length: int) -> float:
    """The anchors' plain-HF step: TinyLlama 26.4K tok/s at 16K, extrapolated by FLOPs (same MFU) to other lengths."""
    flops = model_flops_per_token(config_for(shape), length) * length
    anchor = model_flops_per_token(config_for("tinyllama-1.1b"), 16384) * 16384 / (16384 / 26400)
    return flops / anchor


def perf_calls() -> list[dict]:
    # perf-1 and perf-2 run their benchmarks under --budget (no row starts that cannot end inside it): the budgets
    # are the estimates, plus model builds and the first compilation
    logit, train16, train32, eval_s = 165.0, 180.0, 200.0, 150.0
    niah = LATER_CALL_S + 3 * 6 * sum(10 * forward_flops(n) for n in (3072, 6144, 9216, 12288, 15360, 18432, 21504, 24576, 28672, 32768)) / eval_rate()

    calls = [
        {"name": "perf-1", "command": "bash benchmarks/gpu/perf-1.sh", "what": "logit_scale_overhead (EABF vs ABF: training step, prefill, "
         "decode, attention at 16K/32K, interleaved rounds) + train_throughput at 16K (plain HF as most run it, HF at its best "
         "flags, ropekit, interleaved)", "seconds": LATER_CALL_S + logit + train16 + 30,
         "brings_back": ["logit_scale_overhead-<gpu>.json", "train_throughput-<gpu>.json", "perf-1.log"]},
        {"name": "perf-2", "command": "bash benchmarks/gpu/perf-2.sh", "what": "train_throughput at 32K (resumes the file) + eval_throughput at 32K",
         "seconds": LATER_CALL_S + train32 + eval_s + 30, "brings_back": ["train_throughput-<gpu>.json", "eval_throughput-<gpu>.json", "perf-2.log"]},
        {"name": "perf-3", "command": "bash benchmarks/gpu/perf-3.sh", "what": "niah_grid 10 × 10 up to 32K + max_length 1.1B plain (96K, 128K)",
         "seconds": niah + probe_s("tinyllama-1.1b", 0, "plain", 98304) + 30,
         "brings_back": ["niah_grid-<gpu>.json", "max_length-<gpu>.json", "perf-3.log"]},
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
            "seconds": LATER_CALL_S + sum(x[2] for x in group), "brings_back": ["max_length-<gpu>.json", "max_length.log"],
            "probes": [(shape, lora, variant, n) for n, _, _ in group]}


def measured_rows(results_dir: Path) -> dict[str, dict]:
    """Rows measured in full: label → {"device", "slice"}. A row of a partial file (its call stopped before the end)
    or with evaluation steps skipped at a deadline, or whose training stopped at one, is not done."""
    done = {}
    for path in results_dir.glob("*/results.json"):
        for run in json.loads(path.read_text())["runs"]:
            if run.get("partial") or run.get("skipped") or (run.get("training") or {}).get("stopped_at_deadline") is not None:
                continue
            done[run["label"]] = {"device": (run.get("environment") or {}).get("device", "?"), "slice": path.parent.name}
    return done


def done_labels(results_dir: Path) -> set[str]:
    return set(measured_rows(results_dir))


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
    parser.add_argument("--budget", type=float, default=WINDOW_S, help="device seconds of the window (default: a whole one)")
    parser.add_argument("--estimate", nargs="+", metavar=("SLICE", "LABELS"),
                        help="print the seconds one study call of these rows needs (no fixed cost) and exit")
    args = parser.parse_args(argv)
    if args.estimate:
        labels = [label for label in (args.estimate[1] if len(args.estimate) > 1 else "").split(",") if label]
        seconds = estimate_call(args.estimate[0], labels)
        print(f"{seconds:.0f}")
        return {"seconds": seconds}
    measured = measured_rows(ROOT / "docs" / "results" / "smollm2-64k")
    study = study_calls(skip=set(measured) if args.next else frozenset())
    perf = perf_calls()
    for call in study:
        call["done"] = all(r.label in measured for r in call["rows"])
    for call in perf:
        call["done"] = perf_done(ROOT / "benchmarks" / "results", call)
    plan = {"study": [{**c, "rows": [vars(r) for r in c["rows"]]} for c in study], "perf": perf,
            "windows": windows(measured, args.budget)}
    if args.json:
        print(json.dumps(plan, indent=1))
        return plan
    print(f"Estimates for one H200, calibrated on measured rows (training at the target {train_rate() / 1e12:.0f} TFLOP/s of model "
          f"FLOPs, {train_rate() / PEAK_MEASURED['h200']:.0%} of the measured matmul peak; at 8K {NATIVE_TOKENS_PER_S / 1e3:.0f}K tokens/s). "
          f"A window: {args.budget:.0f} device s: a start (~{START_S} s), the first call's staging ({FIRST_CALL_S:.0f} s), calls of "
          f"< 10 min < 30 s apart; study.sh ends {BUDGET_MARGIN_S} s before the budget it is given.\n")
    print("Windows, in order:")
    for w in plan["windows"]:
        if args.next and w["done"]:
            continue
        size = "perf scripts (below)" if w["seconds"] is None else f"{w['seconds'] / 60:4.1f} min" + ("" if w["fits"] else " — does NOT fit")
        state = f"done on {', '.join(w['devices'])}" if w["done"] else "to run"
        names = ", ".join(label + (f" (done on {measured[label]['device']})" if label in measured else "") for label in w["labels"])
        print(f"  {w['name']} {w['question']}: {names or 'perf-1, perf-2'}; {size}; {state}"
              + (f"; drop first: {', '.join(w['drop_first'])}" if w["drop_first"] else ""))
    print("\nThe study, call by call (first call of a window: stage-1.sh, then within 30 s the first study.sh; B = the device "
          "seconds left, as the status says):")
    for i, call in enumerate(study, 1):
        if args.next and call["done"]:
            continue
        rows = ", ".join(f"{r.label} (train {r.train_s:.0f} s, eval {r.eval_s:.0f} s)" for r in call["rows"])
        where = sorted({measured[r.label]["device"] for r in call["rows"] if r.label in measured})
        then = "  ← within 30 s of the previous call (same warm machine: the checkpoint is there)" if call["must_follow_within_30_s"] else ""
        state = ("done on " + ", ".join(where)) if call["done"] else "to run"
        print(f"  S{i:<2} {call['seconds'] / 60:4.1f} min  {state}  {call['command']}{then}\n        {rows}")
    print("\nPerformance (no model staging; carry .whl and .carry/smollm2-tokenizer):")
    for call in perf:
        if args.next and call["done"]:
            continue
        print(f"  {call['name']:<6} {call['seconds'] / 60:4.1f} min  {'done' if call['done'] else 'to run'}  {call['command']}\n"
              f"         {call['what']}")
    return plan


if __name__ == "__main__":
    main()
