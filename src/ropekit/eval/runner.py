"""Run tasks × lengths for one or more models/methods, with a results cache so an interrupted run resumes.

Each (model, method, parameters, task, options, length, seed) result is one JSON file under ``DIR/cache/``; a run
asks tasks only for the lengths it has not stored yet, and rewrites ``DIR/results.json`` after every step, so an
interrupted evaluation loses at most the step in flight. The schema of ``results.json`` is in docs/evaluation.md.

Timing: ``seconds`` is the job (loading, extending, evaluating); fetching and converting the embedded model and
corpus on a first run is done before it and recorded apart as ``setup_seconds``; ``environment.machine`` holds the
CPU/GPU and its measured fp32 matmul rate, so the time can be scaled to another machine.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import RopekitError
from ..extension import extend, native_length_of
from ..lengths import format_length
from ..models import ALIASES as MODEL_ALIASES
from ..embedded import corpus_dir
from ..models import load_model, pick_device, resolve_source
from ..registry import split_methods
from .tasks import check_options, get_task

RESULTS_FORMAT = 2


@dataclass
class RunSpec:
    """One row of a comparison: a model as loaded, or a base model with a method applied."""

    model: str
    method: str | None = None  # None: evaluate the model as loaded (a checkpoint keeps its own extension)
    params: dict = field(default_factory=dict)
    target_length: int | str | None = None
    label: str | None = None

    def name(self) -> str:
        if self.label:
            return self.label
        if self.method is None:
            return Path(str(self.model)).name or str(self.model)
        return self.method


def model_identity(source: str) -> str:
    """A stable identity for caching: the alias, or the path with the size and mtime of its weight files."""
    path = Path(str(source)).expanduser()
    if not path.exists():
        return str(source)
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("config.json")) if path.is_dir() else [path]
    stamp = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]
    return f"{path.resolve()}:{stamp}"


def cache_key(spec: RunSpec, task: str, options: dict, length: int, seed: int) -> str:
    version = get_task(task).version if task else 1
    material = {"model": model_identity(spec.model), "method": spec.method, "params": spec.params,
                "target": spec.target_length, "task": task, "options": options, "length": length, "seed": seed}
    if version != 1:  # version-1 results keep the keys they were cached under
        material["version"] = version
    return hashlib.sha1(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def environment(device: str = "auto") -> dict:
    """Versions, the device, the exact command, and the machine with its measured fp32 matmul rate
    (:func:`ropekit.machine.machine`, about one second), so a recorded time can be scaled to another machine."""
    import platform
    import sys

    import torch
    import transformers

    from ..version import __version__
    from ..machine import machine

    target = pick_device(device)
    if target.type == "cuda":
        name = f"{torch.cuda.get_device_name(target)} ×{torch.cuda.device_count()} (CUDA {torch.version.cuda})"
    else:
        name = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    return {"ropekit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "device": name, "machine": machine(target),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""}


def prepare(runs: list[RunSpec], tasks: dict[str, dict]) -> float:
    """Fetch what the runs need before the job's clock starts: the embedded model (downloaded and converted on first
    use) and the text corpus. Returns the seconds spent (about 0 once everything is cached)."""
    started = time.time()
    for model in dict.fromkeys(str(spec.model) for spec in runs):
        resolve_source(model)
    if any(get_task(name).kind == "natural" for name in tasks):
        corpus_dir()
    return round(time.time() - started, 1)


def evaluate(runs: list[RunSpec], tasks: dict[str, dict], lengths: list[int], output: str | Path, seed: int = 0,
             device: str = "auto", dtype: str = "auto", kind: str = "eval", progress: bool = True,
             task_lengths: dict[str, list[int]] | None = None, stop_at: float | None = None) -> dict:
    """Evaluate every run on every task at every length; returns the results dict written to ``output/results.json``.

    ``task_lengths``: lengths for some tasks instead of ``lengths`` (e.g. perplexity also inside the native window).
    ``stop_at``: a wall-clock time (``time.time()``) the evaluation must end by. Each (run, task, length) step is then
    run on its own, and a step whose estimated time (the same task measured at this or a shorter length earlier in
    this call, scaled by the length squared) would end after it is skipped and listed in ``results["skipped"]``;
    results.json is rewritten after every step, so a run stopped from outside keeps every finished step."""
    resolved = {name: check_options(get_task(name), options) for name, options in tasks.items()}
    for name in task_lengths or {}:
        if name not in resolved:
            raise RopekitError(f"lengths given for task {name!r}, which is not evaluated", f"use one of: {', '.join(resolved)}")
    for spec in runs:  # fail on bad input before loading anything
        if spec.method is not None:
            split_methods(spec.method)
        if str(spec.model).lower() not in MODEL_ALIASES:
            resolve_source(spec.model)  # a missing path fails here, before any download
    labels = [spec.name() for spec in runs]
    if len(set(labels)) != len(labels):
        raise RopekitError(f"two runs share the label {next(label for label in labels if labels.count(label) > 1)!r}", "give each run its own label")
    per_task = {name: sorted(set((task_lengths or {}).get(name) or lengths)) for name in resolved}
    out = Path(output).expanduser()
    (out / "cache").mkdir(parents=True, exist_ok=True)
    setup_seconds = prepare(runs, resolved)
    started = time.time()
    results = {"format": RESULTS_FORMAT, "kind": kind, "seed": seed, "lengths": sorted({n for ns in per_task.values() for n in ns}),
               "tasks": {name: {"metric": get_task(name).metric, "higher_is_better": get_task(name).higher_is_better,
                                "summary": get_task(name).summary, "options": options, "version": get_task(name).version,
                                **({"lengths": per_task[name]} if per_task[name] != sorted(set(lengths)) else {}),
                                "columns": [asdict(column) for column in get_task(name).columns]} for name, options in resolved.items()},
               "environment": environment(device), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "setup_seconds": setup_seconds, "runs": []}
    if stop_at is not None:
        results["skipped"] = []
    jobs = len(runs) * sum(len(ns) for ns in per_task.values())
    bar = tqdm(total=jobs, desc=kind, unit="job", disable=not progress)
    loaded: dict[str, tuple] = {}
    timings: dict[str, list[tuple[int, float]]] = {}  # task → (length, seconds) measured in this call
    for spec in runs:
        run_started = time.time()
        entry = {"label": spec.name(), **{k: v for k, v in asdict(spec).items() if k != "label"}, "results": {}}
        results["runs"].append(entry)
        cached = {name: {n: out / "cache" / f"{cache_key(spec, name, opts, n, seed)}.json" for n in per_task[name]}
                  for name, opts in resolved.items()}
        pending = {name: [n for n, path in paths.items() if not path.exists()] for name, paths in cached.items()}
        model = tokenizer = None
        facts_path = out / "cache" / f"run-{cache_key(spec, '', {}, 0, seed)}.json"
        if any(pending.values()) or not facts_path.exists():
            model, tokenizer = _model_for(spec, loaded, device, dtype)
            if not facts_path.exists():
                _write_json(facts_path, {"record": getattr(model.config, "ropekit", None), "native_length": native_length_of(model.config)})
        entry.update(json.loads(facts_path.read_text()))  # the model's extension record, also when every result is cached
        for name, opts in resolved.items():
            entry["results"][name] = {}
            for step in _steps(name, pending[name], stop_at is not None):
                if stop_at is not None:
                    guess = _estimate(timings.get(name, []), step)
                    if guess is not None and time.time() + guess > stop_at:
                        skipped = [{"label": spec.name(), "task": name, "length": n, "estimate_s": round(guess, 1),
                                    "reason": "would end after the deadline"} for n in step]
                        results["skipped"] += skipped
                        entry.setdefault("skipped", []).extend(skipped)  # the run says it is incomplete, also once merged
                        bar.update(len(step))
                        continue
                bar.set_postfix_str(f"{spec.name()} {name} {','.join(format_length(n) for n in step)}")
                step_started = time.time()
                fresh = get_task(name).run(model, tokenizer, step, seed=seed, progress=False, **opts)
                timings.setdefault(name, []).append((max(step), time.time() - step_started))
                for n in step:
                    _write_json(cached[name][n], fresh[n])
                    entry["results"][name][str(n)] = fresh[n]
                bar.update(len(step))
                results["seconds"] = round(time.time() - started, 1)
                _write_json(out / "results.json", results)
            for n, path in cached[name].items():
                if path.exists():
                    entry["results"][name][str(n)] = json.loads(path.read_text())
            entry["results"][name] = dict(sorted(entry["results"][name].items(), key=lambda item: int(item[0])))
            bar.update(len(per_task[name]) - len(pending[name]))  # the cached ones
            results["seconds"] = round(time.time() - started, 1)
            _write_json(out / "results.json", results)
        entry["seconds"] = round(time.time() - run_started, 1)
    bar.close()
    results["seconds"] = round(time.time() - started, 1)
    _write_json(out / "results.json", results)
    results["path"] = str(out / "results.json")
    return results


def _steps(task: str, todo: list[int], one_at_a_time: bool) -> list[list[int]]:
    """The lengths one task call gets: all at once, or (under a deadline) one length per call — except where one
    forward serves every length (perplexity with a length-independent RoPE), which stays one call."""
    if not todo:
        return []
    if not one_at_a_time or task == "ppl":
        return [todo]
    return [[n] for n in todo]


def _estimate(measured: list[tuple[int, float]], step: list[int]) -> float | None:
    """Seconds a step of this task will take: the longest measured step at most as long, scaled by the length
    squared (attention dominates at long lengths; an overestimate at short ones). None before any measurement."""
    n = max(step)
    shorter = [(m, s) for m, s in measured if m <= n]
    if not shorter:
        return None
    m, seconds = max(shorter)
    return seconds * (n / m) ** 2


def score_of(run: dict, task: str, length: int, key: str = "score"):
    """A run's headline number ``key`` (a task column) for a task at a length, or None when it was not evaluated."""
    return run["results"].get(task, {}).get(str(length), {}).get(key)


def columns_of(meta: dict) -> list[dict]:
    """A results file's task columns (``key``, ``label``, ``metric``, ``higher_is_better``); one "score" column for
    results written before tasks had several."""
    return meta.get("columns") or [{"key": "score", "label": None, "metric": meta["metric"], "higher_is_better": meta["higher_is_better"]}]


def format_score(score, higher_is_better: bool, digits: int = 0) -> str:
    """Accuracies as whole percents (``digits`` more if asked), perplexity-like scores with one more decimal."""
    if score is None:
        return "-"
    return f"{score:.{digits + (0 if higher_is_better else 1)}f}"


def _model_for(spec: RunSpec, loaded: dict, device: str, dtype: str):
    """Load (once per source) and apply the run's method to a copy."""
    key = str(spec.model)
    if key not in loaded:
        loaded.clear()  # keep one base model in memory
        loaded[key] = load_model(spec.model, device=device, dtype=dtype)
    base, tokenizer = loaded[key]
    if tokenizer is None:
        raise RopekitError(f"{spec.model} has no tokenizer", "evaluate a checkpoint saved with its tokenizer")
    if spec.method in (None, "none"):
        return base, tokenizer
    return extend(copy.deepcopy(base), spec.method, target_length=spec.target_length, tokenizer=tokenizer, **spec.params), tokenizer


def parse_task_options(items: list[str] | None, tasks: list[str]) -> dict[str, dict]:
    """``["niah.depths=[0,0.5,1]", "passkey.trials=5"]`` → ``{"niah": {"depths": [0, 0.5, 1]}, ...}`` (JSON values)."""
    options: dict[str, dict] = {name: {} for name in tasks}
    for item in items or []:
        key, sep, value = item.partition("=")
        task, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise RopekitError(f"--task-option {item!r} is not task.name=value", "write e.g. --task-option niah.trials=2")
        if task not in options:
            raise RopekitError(f"--task-option {item!r} names task {task!r}, which is not in --tasks", f"use one of: {', '.join(tasks)}")
        try:
            options[task][name] = json.loads(value)
        except json.JSONDecodeError:
            options[task][name] = value
    return options
