"""``ropekit compare``: several methods applied to one base model, evaluated side by side.

Recipe, top to bottom: load the base model once → for each method, extend a copy → run every task at every length →
write ``results.json`` (schema in docs/results-schema.md) and print a table. Defaults are sized for a CPU: the
embedded SmolLM2-135M (8K native), training-free methods, passkey and perplexity at 4K (inside the window) and 12K
(beyond it).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import __version__
from .embedded import DEFAULT_MODEL
from .errors import RopekitError
from .eval import run_passkey, run_perplexity
from .extension import extend
from .lengths import format_length
from .models import load_model
from .registry import split_methods

DEFAULT_METHODS = ("none", "yarn", "eabf")
DEFAULT_LENGTHS = (4096, 12288)
TASKS = ("passkey", "ppl")


def environment() -> dict:
    """Versions and device, recorded with every result."""
    import transformers

    device = (f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})" if torch.cuda.is_available()
              else f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    return {"ropekit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "device": device,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""}


def split_params(params: dict, method_names: list[str]) -> dict[str, dict]:
    """``{"yarn.factor": 8, "layers": "all"}`` → per-method dicts. Unprefixed names go to every method that has them."""
    per_method = {name: {} for name in method_names}
    for key, value in params.items():
        prefix, _, name = key.rpartition(".")
        targets = []
        for method_name in method_names:
            methods = split_methods(method_name)
            owns = any(m.param(name) for m in methods)
            if (prefix and prefix in (method_name, *[m.name for m in methods]) and owns) or (not prefix and owns):
                targets.append(method_name)
        if not targets:
            raise RopekitError(f"parameter {key!r} belongs to none of the compared methods ({', '.join(method_names)})",
                               "prefix it with a method, e.g. yarn.factor=8, or drop it")
        for method_name in targets:
            per_method[method_name][name] = value
    return per_method


def compare(model: str = DEFAULT_MODEL, methods: list[str] = DEFAULT_METHODS, target_length: int | str = "32k",
            lengths: list[int] = DEFAULT_LENGTHS, tasks: list[str] = TASKS, trials: int = 1, windows: int = 1,
            tail: int = 1024, seed: int = 0, params: dict | None = None, output: str | Path | None = None,
            device: str = "auto", dtype: str = "auto", ppl_source: str = "paradise_lost", progress: bool = True) -> dict:
    """Evaluate ``methods`` on ``model`` at ``lengths``; returns (and writes to ``output``/results.json) the results."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise RopekitError(f"unknown task {unknown[0]!r}", f"use {', '.join(TASKS)} (more tasks: `ropekit eval`)")
    for name in methods:
        split_methods(name)  # fail on a bad method name before loading anything
    per_method = split_params(params or {}, list(methods))
    out_dir = Path(output).expanduser() if output else None
    if out_dir is not None and (out_dir / "results.json").exists():
        raise RopekitError(f"{out_dir / 'results.json'} already exists", "choose a new --output directory")

    started = time.time()
    base, tokenizer = load_model(model, device=device, dtype=dtype)
    if tokenizer is None:
        raise RopekitError(f"{model} has no tokenizer", "pass a checkpoint saved with its tokenizer")
    results = {"format": 1, "kind": "compare", "model": str(model), "target_length": target_length, "lengths": list(lengths),
               "tasks": list(tasks), "seed": seed, "trials": trials, "windows": windows, "tail": tail,
               "environment": environment(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "methods": {}}
    jobs = [(m, t, length) for m in methods for t in tasks for length in lengths]
    bar = tqdm(total=len(jobs), desc="compare", unit="run", disable=not progress)
    for name in methods:
        method_started = time.time()
        model_m = base if name == "none" else extend(copy.deepcopy(base), name, target_length=target_length, **per_method[name])
        entry = {"record": getattr(model_m.config, "ropekit", None), "tasks": {}}
        for task in tasks:
            if task == "passkey":
                for length in lengths:  # one length at a time, so the bar (and its ETA) moves
                    bar.set_postfix_str(f"{name} passkey {format_length(length)}")
                    one = run_passkey(model_m, tokenizer, [length], trials=trials, seed=seed, progress=False)
                    entry["tasks"].setdefault("passkey", {**one, "lengths": {}})["lengths"].update(one["lengths"])
                    bar.update(1)
            else:  # one forward per window covers every length (see eval/perplexity.py)
                bar.set_postfix_str(f"{name} ppl")
                entry["tasks"]["ppl"] = run_perplexity(model_m, tokenizer, list(lengths), windows=windows, tail=tail, source=ppl_source, progress=False)
                bar.update(len(lengths))
        entry["seconds"] = round(time.time() - method_started, 1)
        results["methods"][name] = entry
        if model_m is not base:
            del model_m
    bar.close()
    results["seconds"] = round(time.time() - started, 1)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / ".results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2, default=str))
        os.replace(tmp, out_dir / "results.json")
        results["path"] = str(out_dir / "results.json")
    return results


def summary_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """A table: one row per method, passkey % and PPL per length."""
    lengths = results["lengths"]
    header = ["method"]
    if "passkey" in results["tasks"]:
        header += [f"passkey {format_length(n)}" for n in lengths]
    if "ppl" in results["tasks"]:
        header += [f"PPL {format_length(n)}" for n in lengths]
    rows = []
    for name, entry in results["methods"].items():
        row = [name]
        if "passkey" in entry["tasks"]:
            row += [f"{entry['tasks']['passkey']['lengths'][str(n)]['accuracy']:.0f}%" for n in lengths]
        if "ppl" in entry["tasks"]:
            row += [f"{entry['tasks']['ppl']['lengths'][str(n)]['ppl']:.1f}" for n in lengths]
        rows.append(row)
    return header, rows
