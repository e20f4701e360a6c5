"""The papers' claims checked against the lab's numbers, and ``lab.md``: :func:`compare` (is row A better than,
or at least as good as, row B on one cell), :func:`claim_checks` (the lab's own requirements and the papers' claims,
each with its evidence and a verdict) and :func:`lab_markdown` (the tables with the spread over seeds, then the
claims).

Reads only results dicts (as :func:`ropekit.studies.lab.rows.combine` writes them); the row table's arm names are
the one thing it takes from the rest of the lab.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .rows import ARMS


# ----------------------------------------------------------------------------------------------------------------------
# The papers' claims, checked against the numbers


def _run(results: dict, label: str) -> dict | None:
    return next((r for r in results["runs"] if r["label"] == label), None)


def _cell(results: dict, label: str, task: str, multiple: int, key: str = "score"):
    run = _run(results, label)
    native = results["lab"]["shape"]["native"]
    cell = (run or {}).get("results", {}).get(task, {}).get(str(multiple * native))
    if cell is None:
        return None
    if cell.get(key) is None:
        return None
    prefix = {"middle_third": "middle", "far": "far"}.get(key)
    seeds = cell.get(f"{prefix}_seeds" if prefix else "seeds", [cell[key]])
    n = cell.get(f"{prefix}_n" if prefix else "n", 0)
    return {"mean": cell[key], "seeds": seeds, "n": n}


PPL_TOLERANCE = 0.01


def compare(results: dict, a: str, b: str, task: str, multiple: int, key: str = "score", strict: bool = True) -> dict:
    """Is row ``a`` better than row ``b`` (``strict``) or at least as good? Accuracies: the pooled difference against
    two binomial standard errors, and how many seeds agree; perplexity: how many seeds agree."""
    x, y = _cell(results, a, task, multiple, key), _cell(results, b, task, multiple, key)
    if x is None or y is None:
        return {"verdict": "not run", "text": f"{a} vs {b}: not run"}
    higher = task != "ppl"
    diff = (x["mean"] - y["mean"]) * (1 if higher else -1)
    seeds = len(x["seeds"])
    if higher:
        agree = sum(p > q for p, q in zip(x["seeds"], y["seeds"]))
        worse = sum(p < q for p, q in zip(x["seeds"], y["seeds"]))
        pa, pb = x["mean"] / 100, y["mean"] / 100
        se = 100 * math.sqrt(pa * (1 - pa) / max(x["n"], 1) + pb * (1 - pb) / max(y["n"], 1))
        better, behind = diff > 2 * se and agree > seeds / 2, diff < -2 * se and worse > seeds / 2
        detail = f"{x['mean']:.1f} vs {y['mean']:.1f} (Δ {diff:+.1f} ± {2 * se:.1f}, {agree}/{seeds} seeds ahead)"
    else:  # perplexity: a seed counts when the two differ by more than PPL_TOLERANCE
        agree = sum(p < q * (1 - PPL_TOLERANCE) for p, q in zip(x["seeds"], y["seeds"]))
        worse = sum(p > q * (1 + PPL_TOLERANCE) for p, q in zip(x["seeds"], y["seeds"]))
        better, behind = agree == seeds, worse == seeds
        detail = f"{x['mean']:.2f} vs {y['mean']:.2f} ({agree}/{seeds} seeds lower by > {PPL_TOLERANCE:.0%})"
    if better:
        verdict = "confirmed"
    elif behind:
        verdict = "refuted"
    else:
        verdict = "not resolved" if strict else "tie"  # "a ≥ b" is consistent with a tie
    return {"verdict": verdict, "text": detail, "diff": diff}


def claim_checks(results: dict) -> list[dict]:
    """The lab's own requirements and the papers' claims, each with the evidence and a verdict."""
    labels = {r["label"] for r in results["runs"]}
    multiples = results["lab"]["budget"]["multiples"]
    checks = []

    def add(group, claim, source, verdicts, evidence):
        if not verdicts or "not run" in verdicts:
            outcome = "not run"
        elif all(v == "confirmed" for v in verdicts):
            outcome = "confirmed"
        elif all(v in ("confirmed", "tie") for v in verdicts):
            outcome = "consistent (tie within noise)"
        elif all(v == "refuted" for v in verdicts):
            outcome = "refuted"
        elif any(v in ("confirmed", "tie") for v in verdicts):
            outcome = "partly"
        else:
            outcome = "not resolved"
        checks.append({"group": group, "claim": claim, "source": source, "verdict": outcome, "evidence": evidence})

    def at_least(label, task, multiple, threshold, key="score", below=False):
        cell = _cell(results, label, task, multiple, key)
        name = f"{label} {task}{' ' + key.replace('_', ' ') if key != 'score' else ''} @{multiple}×"
        if cell is None:
            return "not run", f"{name}: not run"
        ok = cell["mean"] <= threshold if below else cell["mean"] >= threshold
        spread = f" (seeds {min(cell['seeds']):.0f}–{max(cell['seeds']):.0f})" if len(cell["seeds"]) > 1 else ""
        return ("confirmed" if ok else "refuted"), f"{name} = {cell['mean']:.1f}{spread}"

    if "none" in labels:
        parts = [at_least("none", "lab-passkey", 1, 95), at_least("none", "lab-kv", 1, 90)]
        add("lab", "the pre-trained model retrieves in its window (pass key ≥ 95%, key–value ≥ 90%)", "issue",
            [p[0] for p in parts], "; ".join(p[1] for p in parts))
        if 4 in multiples:
            parts = [at_least("none", task, 4, 10, below=True) for task in ("lab-passkey", "lab-kv")]
            add("lab", "unextended, it fails at 4× (≤ 10% on all items)", "issue", [p[0] for p in parts], "; ".join(p[1] for p in parts))
            parts = [at_least("none", task, 4, 10, key="far", below=True) for task in ("lab-passkey", "lab-kv")]
            add("lab", "unextended, it fails at 4× on the items beyond its window (needle ≥ 128 tokens before the answer: ≤ 10%)",
                "issue (re-scoped, docs/lab.md)", [p[0] for p in parts], "; ".join(p[1] for p in parts))
    tuned = [r["label"] for r in results["runs"] if results["lab"]["arms"].get(r["label"]) == "target" and r["label"] != "ft-control"]
    if tuned and 8 in multiples:
        def worst(label):
            cells = [_cell(results, label, t, m) for t in ("lab-passkey", "lab-kv") for m in (4, 8)]
            return min(c["mean"] for c in cells)

        best = max(tuned, key=worst)
        parts = [at_least(best, t, m, 90) for t in ("lab-passkey", "lab-kv") for m in (4, 8)]
        add("lab", "the best fine-tuned method retrieves ≥ 90% at 4× and 8×", "issue", [p[0] for p in parts],
            f"best: {best}; " + "; ".join(p[1] for p in parts))
    for a, b, strict in (("ft-eabf", "ft-abf", False), ("ft-abf", "ft-pi", True), ("ft-abf", "ft-yarn", True)):
        if {a, b} <= labels:
            for task in ("lab-passkey", "ppl"):
                found = [(m, compare(results, a, b, task, m, strict=strict)) for m in (4, 8) if m in multiples]
                add("paper", f"fine-tuned {a[3:].upper()} {'>' if strict else '≥'} {b[3:].upper()} on {'pass key' if task != 'ppl' else 'perplexity'}",
                    "Zhang et al. 2024 (Entropy-ABF), Tables 2 and 4", [c["verdict"] for _, c in found],
                    "; ".join(f"@{m}×: {c['text']}" for m, c in found))
    for variant in ("pi", "yarn"):
        a, b = f"cream-{variant}", f"pose-{variant}"
        if {a, b} <= labels:
            found = [(m, compare(results, a, b, "lab-kv", m, key="middle_third", strict=False)) for m in (2, 4) if m in multiples]
            add("paper", f"CREAM ≥ PoSE on middle-third key–value retrieval within the target ({variant.upper()}, same budget)",
                "Wu et al. 2024 (CREAM), Lost-in-the-Middle table", [c["verdict"] for _, c in found],
                "; ".join(f"@{m}×: {c['text']}" for m, c in found))
    if {"self-extend", "none"} <= labels:
        parts = []
        for task in ("lab-passkey", "lab-kv"):
            reference = _cell(results, "none", task, 1)
            if 4 in multiples:
                parts.append(at_least("self-extend", task, 4, reference["mean"] - 10))
        add("paper", "Self-Extend recovers retrieval at its target (4×) without training (within 10 points of the model's in-window accuracy)",
            "Jin et al. 2024 (LLM Maybe LongLM)", [p[0] for p in parts], "; ".join(p[1] for p in parts))
    if "ft-control" in labels:
        for label in tuned:
            found = [(m, compare(results, label, "ft-control", "lab-passkey", m)) for m in (4, 8) if m in multiples]
            add("control", f"{label} beats the fine-tuned control (no RoPE change) on pass key", "lab-feasibility: a method that does not beat it has shown nothing",
                [c["verdict"] for _, c in found], "; ".join(f"@{m}×: {c['text']}" for m, c in found))
    return checks


# ----------------------------------------------------------------------------------------------------------------------
# lab.md


def _machine() -> str:
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{model}, {os.cpu_count()} CPU cores, torch {torch.get_num_threads()} threads"


def _format(cell, key="score", digits=0) -> str:
    if cell is None or cell.get(key) is None:
        return "-"
    prefix = {"middle_third": "middle", "far": "far"}.get(key)
    seeds = cell.get(f"{prefix}_seeds" if prefix else "seeds", [])
    text = f"{cell[key]:.{digits}f}"
    if len(seeds) > 1:
        text += f" ({min(seeds):.{digits}f}–{max(seeds):.{digits}f})"
    return text


def lab_markdown(results: dict, checks: list[dict]) -> str:
    from ...lengths import format_length

    info = results["lab"]
    native = info["shape"]["native"]
    multiples = info["budget"]["multiples"]
    seeds = info["seeds"]
    cpu = sum(s["cpu_seconds"] for s in seeds)
    wall = sum(s["seconds"] for s in seeds)
    env = results["environment"]
    device = "" if env["device"].startswith("CPU") else f"; {env['device']}"
    lines = [f"# ropekit lab ({info['budget']['name']} budget, {len(seeds)} pre-training seed{'s' if len(seeds) > 1 else ''})", "",
             f"- machine: {_machine()}{device}; torch {env['torch']}, transformers {env['transformers']}, ropekit {env['ropekit']}",
             f"- command: `{env['command']}`",
             f"- time: {wall:.0f} s wall, {cpu:.0f} s CPU (user+sys) in all; CPU/2 = {cpu / 2:.0f} s estimates the wall time on 2 quiet cores",
             f"- model: {json.dumps(info['shape'])}, {seeds[0]['pretrain']['parameters']:,} parameters; native window {native}, "
             f"every method extended to {info['budget']['factor']}× = {info['budget']['factor'] * native} tokens", ""]
    lines += ["## Time per stage (seconds: wall / CPU; what each stage cost when it ran)", "",
              "| seed | pre-training | trained rows | evaluation | total |", "|---|---|---|---|---|"]
    for s in seeds:
        st = s["stages"]
        rows_wall = sum(v["seconds"] for v in st["extend"].values())
        rows_cpu = sum(v["cpu_seconds"] for v in st["extend"].values())
        lines.append(f"| {s['seed']} | {st['pretrain']['seconds']:.0f} / {st['pretrain']['cpu_seconds']:.0f} | {rows_wall:.0f} / {rows_cpu:.0f} | "
                     f"{st['evaluate']['seconds']:.0f} / {st['evaluate']['cpu_seconds']:.0f} | {s['seconds']:.0f} / {s['cpu_seconds']:.0f} |")
    lines += ["", "Pre-training learning curve (in-window accuracy %, evaluation split; CPU seconds of the training process):", "",
              "| seed | " + " | ".join(f"step {p['step']}" for p in seeds[0]["pretrain"]["learning_curve"]) + " |",
              "|---|" + "---|" * len(seeds[0]["pretrain"]["learning_curve"])]
    for s in seeds:
        lines.append(f"| {s['seed']} | " + " | ".join(f"{p['passkey']:.0f} / {p['kv']:.0f} ({p['cpu_seconds']:.0f} s)" for p in s["pretrain"]["learning_curve"]) + " |")
    lines += ["", "(pass key / key–value)", ""]
    spread = " Cells: mean over seeds (min–max)." if len(seeds) > 1 else ""
    header = "| row | arm | " + " | ".join(f"{m}× ({format_length(m * native)})" for m in multiples) + " |"
    rule = "|---|---|" + "---|" * len(multiples)
    for task, title, digits in (("lab-passkey", "Pass key (accuracy %)", 0), ("lab-kv", "Key–value retrieval (accuracy %)", 0), ("ppl", "Perplexity (last 64 tokens, Paradise Lost)", 2)):
        if task not in results["tasks"]:
            continue
        lines += [f"## {title}", "", f"n = {results['runs'][0]['results'][task][str(native)]['n']} items per cell in all.{spread}", "", header, rule]
        for run in results["runs"]:
            cells = [_format(run["results"][task].get(str(m * native)), digits=digits) for m in multiples]
            lines.append(f"| {run['label']} | {ARMS[info['arms'][run['label']]]} | " + " | ".join(cells) + " |")
        lines.append("")
        extra = [("far", f"Beyond the window (needle at least {native} tokens before the answer):")]
        if task == "lab-kv":
            extra.insert(0, ("middle_third", "Middle third (gold pair at depth 1/3–2/3):"))
        for key, caption in extra if task != "ppl" else []:
            lines += [caption, "", header, rule]
            for run in results["runs"]:
                cells = [_format(run["results"][task].get(str(m * native)), key=key) for m in multiples]
                lines.append(f"| {run['label']} | {ARMS[info['arms'][run['label']]]} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## Claims", "", "| group | claim | source | verdict | evidence |", "|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['group']} | {c['claim']} | {c['source']} | **{c['verdict']}** | {c['evidence']} |")
    lines += ["", "Verdicts: accuracies compare the seed-pooled difference with two binomial standard errors (±) and need most "
              f"seeds to agree; perplexities need every seed to differ by more than {PPL_TOLERANCE:.0%} the same way. A ≥ claim "
              "holds as a tie unless the row is clearly behind; a > claim within the noise is 'not resolved'.", "",
              "Plots and per-task tables: `report.md` / `report.html` (seed means); each `seed-<k>/` has its own report.", ""]
    return "\n".join(lines)
