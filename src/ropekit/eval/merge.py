"""Merge several ``results.json`` files (format 2) into one, so a study run in slices — on different days, machines or
GPU windows — reads as one set of tables and plots.

A directory of slices looks like ``DIR/<slice>/results.json``; :func:`find_result_sets` finds them and
:func:`merge_results` joins them: the union of lengths and tasks, every run kept with the slice it came from and its
own environment and task options. A run label may appear in only one slice (two different rows must not share a
name); within one slice a re-run replaces the earlier entry (``replace=True``).

Scores of different task format versions (``tasks[name]["version"]``, 1 where a file predates versions) are never
merged into one column: the newest version keeps the task's name, and a run scored with an older one has those scores
under ``"<task>@v<version>"``, a task of its own in the tables and plots.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import RopekitError


def find_result_sets(directory: str | Path) -> list[tuple[str, Path]]:
    """``(slice name, path)`` of every ``DIR/<slice>/results.json``, sorted by slice name."""
    directory = Path(directory).expanduser()
    return sorted((path.parent.name, path) for path in directory.glob("*/results.json"))


def _joined(values) -> str:
    distinct = list(dict.fromkeys(str(v) for v in values if v))
    return "; ".join(distinct)


def merge_results(sets: list[tuple[str, dict]], replace: bool = False) -> dict:
    """One results dict from ``(name, results)`` pairs, in order. Each run gets ``slice`` (its set's name, unless it
    already has one), ``environment`` and ``task_options`` (the options its scores were measured with). A label found
    again raises, or with ``replace=True`` replaces the earlier run."""
    if not sets:
        raise RopekitError("no results to merge", "run a slice first (ropekit study --slice NAME)")
    runs: dict[str, dict] = {}
    tasks: dict[str, dict] = {}
    options_seen: dict[str, dict[str, dict]] = {}
    lengths: set[int] = set()
    for name, results in sets:
        if results.get("format") != 2 or "runs" not in results:
            raise RopekitError(f"results of {name!r} are not a ropekit results file (format 2)", "re-run that slice with this ropekit version")
    newest = {}
    for _, results in sets:
        for task, meta in results["tasks"].items():
            newest[task] = max(newest.get(task, 1), meta.get("version", 1))
    for name, results in sets:
        lengths.update(int(n) for n in results["lengths"])
        renamed = {task: task if meta.get("version", 1) == newest[task] else f"{task}@v{meta.get('version', 1)}"
                   for task, meta in results["tasks"].items()}
        for task, meta in results["tasks"].items():
            key = renamed[task]
            extra = {} if key == task else {"summary": f"{meta['summary']} (format v{meta.get('version', 1)}: "
                                                       f"not comparable with v{newest[task]}, kept apart)"}
            tasks.setdefault(key, {**meta, "version": meta.get("version", 1), **extra})
            options_seen.setdefault(key, {})[name] = meta["options"]
        for run in results["runs"]:
            run = {**run, "results": {renamed.get(t, t): r for t, r in run["results"].items()}}
            if "task_options" in run:
                run["task_options"] = {renamed.get(t, t): o for t, o in run["task_options"].items()}
            entry = {**run, "slice": run.get("slice", name), "environment": run.get("environment", results["environment"]),
                     "task_options": run.get("task_options", {renamed[t]: m["options"] for t, m in results["tasks"].items()}),
                     "task_versions": {renamed[t]: m.get("version", 1) for t, m in results["tasks"].items() if renamed[t] in run["results"]}}
            label = entry["label"]
            if label in runs and not replace:
                raise RopekitError(f"run {label!r} is in two result sets ({runs[label]['slice']!r} and {entry['slice']!r})",
                                   "remove it from one of them, or give the rows different labels")
            runs[label] = entry
    for task, by_set in options_seen.items():
        distinct = {json.dumps(o, sort_keys=True) for o in by_set.values()}
        if len(distinct) > 1:  # the table shows one task; say which options each slice used
            tasks[task]["options"] = {"by slice": by_set}
    environments = [r["environment"] for r in runs.values()]
    first = sets[0][1]
    return {
        "format": 2, "kind": first.get("kind", "study"), "seed": first.get("seed", 0), "lengths": sorted(lengths), "tasks": tasks,
        "environment": {key: _joined(e.get(key) for e in environments) for key in ("ropekit", "torch", "transformers", "python", "device", "command")},
        "started": min(r.get("started", "") for _, r in sets), "seconds": round(sum(r.get("seconds", 0) for _, r in sets), 1),
        "runs": list(runs.values()), "merged_from": [name for name, _ in sets],
    }


def load_merged(directory: str | Path) -> dict:
    """Merge every slice's results.json under ``directory``."""
    sets = []
    for name, path in find_result_sets(directory):
        try:
            sets.append((name, json.loads(path.read_text())))
        except json.JSONDecodeError as err:
            raise RopekitError(f"{path} is not valid JSON ({err.msg})", "re-run that slice (it resumes from its cache)") from None
    if not sets:
        raise RopekitError(f"no results.json in {directory} or its sub-directories", "pass a study directory or an evaluation's --output")
    return merge_results(sets)
