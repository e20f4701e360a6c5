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
    material = json.dumps({"model": model_identity(spec.model), "method": spec.method, "params": spec.params,
                           "target": spec.target_length, "task": task, "options": options, "length": length, "seed": seed},
                          sort_keys=True, default=str)
    return hashlib.sha1(material.encode()).hexdigest()[:20]


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

    from .. import __version__
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
             device: str = "auto", dtype: str = "auto", kind: str = "eval", progress: bool = True) -> dict:
    """Evaluate every run on every task at every length; returns the results dict written to ``output/results.json``."""
    resolved = {name: check_options(get_task(name), options) for name, options in tasks.items()}
    for spec in runs:  # fail on bad input before loading anything
        if spec.method is not None:
            split_methods(spec.method)
        if str(spec.model).lower() not in MODEL_ALIASES:
            resolve_source(spec.model)  # a missing path fails here, before any download
    labels = [spec.name() for spec in runs]
    if len(set(labels)) != len(labels):
        raise RopekitError(f"two runs share the label {next(label for label in labels if labels.count(label) > 1)!r}", "give each run its own label")
    out = Path(output).expanduser()
    (out / "cache").mkdir(parents=True, exist_ok=True)
    setup_seconds = prepare(runs, resolved)
    started = time.time()
    results = {"format": RESULTS_FORMAT, "kind": kind, "seed": seed, "lengths": list(lengths),
               "tasks": {name: {"metric": get_task(name).metric, "higher_is_better": get_task(name).higher_is_better,
                                "summary": get_task(name).summary, "options": options,
                                "columns": [asdict(column) for column in get_task(name).columns]} for name, options in resolved.items()},
               "environment": environment(device), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "setup_seconds": setup_seconds, "runs": []}
    jobs = len(runs) * len(resolved) * len(lengths)
    bar = tqdm(total=jobs, desc=kind, unit="job", disable=not progress)
    loaded: dict[str, tuple] = {}
    for spec in runs:
        run_started = time.time()
        entry = {"label": spec.name(), **{k: v for k, v in asdict(spec).items() if k != "label"}, "results": {}}
        results["runs"].append(entry)
        pending = {name: [n for n in lengths if not (out / "cache" / f"{cache_key(spec, name, opts, n, seed)}.json").exists()]
                   for name, opts in resolved.items()}
        model = tokenizer = None
        facts_path = out / "cache" / f"run-{cache_key(spec, '', {}, 0, seed)}.json"
        if any(pending.values()) or not facts_path.exists():
            model, tokenizer = _model_for(spec, loaded, device, dtype)
            if not facts_path.exists():
                _write_json(facts_path, {"record": getattr(model.config, "ropekit", None), "native_length": native_length_of(model.config)})
        entry.update(json.loads(facts_path.read_text()))  # the model's extension record, also when every result is cached
        for name, opts in resolved.items():
            entry["results"][name] = {}
            todo = pending[name]
            if todo:
                bar.set_postfix_str(f"{spec.name()} {name} {','.join(format_length(n) for n in todo)}")
                fresh = get_task(name).run(model, tokenizer, todo, seed=seed, progress=False, **opts)
                for n in todo:
                    _write_json(out / "cache" / f"{cache_key(spec, name, opts, n, seed)}.json", fresh[n])
            for n in lengths:
                entry["results"][name][str(n)] = json.loads((out / "cache" / f"{cache_key(spec, name, opts, n, seed)}.json").read_text())
            bar.update(len(lengths))
            results["seconds"] = round(time.time() - started, 1)
            _write_json(out / "results.json", results)
        entry["seconds"] = round(time.time() - run_started, 1)
    bar.close()
    results["seconds"] = round(time.time() - started, 1)
    _write_json(out / "results.json", results)
    results["path"] = str(out / "results.json")
    return results


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
