"""``lab.md``: :func:`lab_markdown` renders the combined results (tables up to the target with the spread over
seeds, a robustness table beyond the target naming each row's configured range) and the claim rows of
:func:`ropekit.studies.lab.claims.claim_checks` (each with its per-seed and pooled paired differences, the verdict
and the rule), then says which claims this scale cannot decide and why.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .claims import CEILING, CONTROL_SOURCE, LEVEL, MARGINS
from .rows import ARMS, DEV_SEED


def _machine() -> str:
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
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


def _items(info: dict) -> str:
    seeds = info["seeds"]
    items = info.get("items", "dev")  # results written before item sets were dev items (evaluation seed 0)
    evals = ", ".join(f"{s.get('eval_seed', DEV_SEED)} (pre-training seed {s['seed']})" for s in seeds)
    why = ("never used by a design run, one set per pre-training seed" if items == "test" else
           "the items the design runs were scored on; every pre-training seed shares them")
    return f"- items: **{items}**, evaluation seed {evals}: {why}"


def _diff(x: float, unit: str) -> str:
    return f"{100 * x:+.1f}" if unit == "accuracy" else f"{x:+.3f}"


def _interval(entry: dict, unit: str) -> str:
    return f"{_diff(entry['diff'], unit)} [{_diff(entry['low'], unit)}, {_diff(entry['high'], unit)}]"


def _claim_line(c: dict, first: bool) -> str:
    """One claim row; the claim and its source only on the first row of the claim (the rows below repeat them)."""
    head = f"| {c['claim']} | {c['source']} |" if first else "| | |"
    verdict = f"**{c['verdict']}**" + (f": {c['reason']}" if c["verdict"] in ("not decidable here", "not run") else "")
    if "pooled" not in c:
        return f"{head} - | - | - | - | - | {verdict} |"
    unit, pooled = c["unit"], c["pooled"]
    relation = ">" if c["relation"] == "better" else "≥"
    seeds = "; ".join(f"{s['seed']}: {_interval(s, unit)}" for s in c["seeds"])
    means = (f"{100 * pooled['mean_a']:.1f} vs {100 * pooled['mean_b']:.1f}" if unit == "accuracy" else
             f"ppl {math.exp(pooled['mean_a']):.2f} vs {math.exp(pooled['mean_b']):.2f}")
    shared = " (shared items)" if c.get("shared_items") else ""
    return f"{head} {c['a']} {relation} {c['b']} | {c['metric']} | {means} | {seeds} | {_interval(pooled, unit)}{shared} | {verdict} |"


def _claims(checks: list[dict], group: str, title: str, note: str = "") -> list[str]:
    rows = [c for c in checks if c["group"] == group]
    if not rows:
        return []
    lines = [f"### {title}", "", *([note, ""] if note else []),
             "| claim | source | rows | metric | A vs B (pooled) | Δ per pre-training seed [interval] | Δ pooled [interval] | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for index, c in enumerate(rows):
        lines.append(_claim_line(c, index == 0 or c["claim"] != rows[index - 1]["claim"]))
    return lines + [""]


RULE = (f"Every verdict pairs two rows on the same items (pass key, key–value and binding per item, Δ in points of accuracy; perplexity "
        f"per window, Δ in nats of mean NLL, positive = A better) with a {LEVEL:.0%} paired bootstrap interval over items, per "
        "seed and pooled: 'A > B' is confirmed when every seed favours A and the pooled interval lies above 0 (refuted: every "
        f"seed favours B and it lies below 0), 'A ≥ B' is confirmed when the pooled lower bound is above −{100 * MARGINS['accuracy']:.0f} "
        f"points or −{MARGINS['nll']:.3f} nats (2% perplexity) and refuted when its upper bound is below, any other outcome is a "
        f"tie, and a claimed gain over a row already at ≥ {CEILING:.0%} accuracy is not decidable here.")


def lab_markdown(results: dict, checks: list[dict]) -> str:
    from ...lengths import format_length

    info = results["lab"]
    native = info["shape"]["native"]
    factor = info["budget"].get("factor", 4)
    multiples = info["budget"]["multiples"]
    inside = [m for m in multiples if m <= factor]
    beyond = [m for m in multiples if m > factor]
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
             f"every method configured for and extended to {factor}× = {factor * native} tokens (the target)", _items(info), ""]
    lines += ["## Time per stage (seconds: wall / CPU; what each stage cost when it ran)", "",
              "| seed | pre-training | trained rows | evaluation | total |", "|---|---|---|---|---|"]
    for s in seeds:
        st = s["stages"]
        rows_wall = sum(v["seconds"] for v in st["extend"].values())
        rows_cpu = sum(v["cpu_seconds"] for v in st["extend"].values())
        lines.append(f"| {s['seed']} | {st['pretrain']['seconds']:.0f} / {st['pretrain']['cpu_seconds']:.0f} | {rows_wall:.0f} / {rows_cpu:.0f} | "
                     f"{st['evaluate']['seconds']:.0f} / {st['evaluate']['cpu_seconds']:.0f} | {s['seconds']:.0f} / {s['cpu_seconds']:.0f} |")
    lines.append("")
    if seeds[0]["pretrain"]["learning_curve"]:
        lines += ["Pre-training learning curve (in-window accuracy %, evaluation split; CPU seconds of the training process):", "",
                  "| seed | " + " | ".join(f"step {p['step']}" for p in seeds[0]["pretrain"]["learning_curve"]) + " |",
                  "|---|" + "---|" * len(seeds[0]["pretrain"]["learning_curve"])]
        for s in seeds:
            lines.append(f"| {s['seed']} | " + " | ".join(f"{p['passkey']:.0f} / {p['kv']:.0f} ({p['cpu_seconds']:.0f} s)" for p in s["pretrain"]["learning_curve"]) + " |")
        lines += ["", "(pass key / key–value)", ""]
    spread = " Cells: mean over seeds (min–max over seeds)." if len(seeds) > 1 else ""
    header = "| row | arm | " + " | ".join(f"{m}× ({format_length(m * native)})" for m in inside) + " |"
    rule = "|---|---|" + "---|" * len(inside)
    tasks = [(t, title, d) for t, title, d in (("lab-passkey", "Pass key (accuracy %)", 0), ("lab-kv", "Key–value retrieval (accuracy %)", 0),
                                                ("lab-bind", "Binding: key–value among near-miss keys, numbers in the haystack (accuracy %)", 0),
                                                ("ppl", "Perplexity (last 64 tokens, Paradise Lost)", 2)) if t in results["tasks"]]
    for task, title, digits in tasks:
        lines += [f"## {title}", "", f"n = {results['runs'][0]['results'][task][str(native)]['n']} items per cell in all.{spread}", "", header, rule]
        for run in results["runs"]:
            cells = [_format(run["results"][task].get(str(m * native)), digits=digits) for m in inside]
            lines.append(f"| {run['label']} | {ARMS[info['arms'][run['label']]]} | " + " | ".join(cells) + " |")
        lines.append("")
        extra = [("far", f"Beyond the window (needle at least {native} tokens before the answer):")]
        if task in ("lab-kv", "lab-bind"):
            extra.insert(0, ("middle_third", "Middle third (gold pair at depth 1/3–2/3):"))
        for key, caption in extra if task != "ppl" else []:
            lines += [caption, "", header, rule]
            for run in results["runs"]:
                cells = [_format(run["results"][task].get(str(m * native)), key=key) for m in inside]
                lines.append(f"| {run['label']} | {ARMS[info['arms'][run['label']]]} | " + " | ".join(cells) + " |")
            lines.append("")
    if beyond:
        configured = info.get("configured", {})
        cols = [(t, m) for t, _, _ in tasks for m in beyond]
        names = {"lab-passkey": "pass key", "lab-kv": "key–value", "lab-bind": "binding", "ppl": "perplexity"}
        lines += ["## Robustness beyond the target (no claim uses these cells)", "",
                  f"Every row is configured for the target ({factor}×) at most; these lengths lie outside each row's configured range "
                  "(dynamic NTK aside, whose base follows the input).", "",
                  "| row | configured for | " + " | ".join(f"{names[t]} {m}×" for t, m in cols) + " |", "|---|---|" + "---|" * len(cols)]
        for run in results["runs"]:
            cells = [_format(run["results"][t].get(str(m * native)), digits=2 if t == "ppl" else 0) for t, m in cols]
            lines.append(f"| {run['label']} | {configured.get(run['label'], {}).get('range', '-')} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"## Claims (at the target, {factor}× = {factor * native} tokens)", "", RULE, ""]
    if not any(c["group"] in ("paper", "control") for c in checks):
        lines += ["No claim has both of its rows in this run.", ""]
    lines += _claims(checks, "paper", "The papers' claims")
    lines += _claims(checks, "ropekit", "ropekit's own rule")
    lines += _claims(checks, "control", "Against the fine-tuned control (RoPE unchanged, same budget)", f"Source: {CONTROL_SOURCE}.")
    lab_rows = [c for c in checks if c["group"] == "lab"]
    if lab_rows:
        lines += ["### The lab's own requirements (thresholds on the mean over seeds; not papers' claims)", "",
                  "| requirement | verdict | evidence |", "|---|---|---|"]
        lines += [f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} |" for c in lab_rows] + [""]
    undecided = [c for c in checks if c["verdict"] == "not decidable here"]
    if undecided:
        lines += ["## What this scale cannot decide", ""]
        lines += [f"- {c['claim']}" + (f" ({c['a']} vs {c['b']}, {c['metric']})" if "a" in c else "") + f": {c['reason']}" for c in undecided]
        lines.append("")
    lines += ["Plots and per-task tables: `report.md` / `report.html` (seed means); each `seed-<k>/` has its own report.", ""]
    return "\n".join(lines)
