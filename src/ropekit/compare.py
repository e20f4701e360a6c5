"""``ropekit compare``: several methods applied to one base model (and/or several checkpoints), side by side.

Defaults are sized for a CPU: the embedded SmolLM2-135M (8K native), the original next to YaRN and Entropy-Aware
ABF at target 32K, passkey and perplexity at 4K (inside the window) and 12K (beyond it). Any task and length grid
works (``tasks``/``lengths``); results go through the same resumable runner as ``ropekit eval``.
"""

from __future__ import annotations

from pathlib import Path

from .embedded import DEFAULT_MODEL
from .errors import RopekitError
from .eval.runner import RunSpec, evaluate, format_score, score_of
from .lengths import format_length
from .registry import split_methods

DEFAULT_METHODS = ("none", "yarn", "eabf")
DEFAULT_LENGTHS = (4096, 12288)
DEFAULT_TASKS = {"passkey": {"trials": 1}, "ppl": {"windows": 1}}


def split_params(params: dict, method_names: list[str]) -> dict[str, dict]:
    """``{"yarn.factor": 8, "layers": "all"}`` → per-method dicts. Unprefixed names go to every method that has them."""
    per_method = {name: {} for name in method_names}
    for key, value in params.items():
        prefix, _, name = key.rpartition(".")
        targets = []
        for method_name in method_names:
            methods = split_methods(method_name)
            owns = any(m.param(name) for m in methods)
            if owns and (not prefix or prefix in (method_name, *[m.name for m in methods])):
                targets.append(method_name)
        if not targets:
            raise RopekitError(f"parameter {key!r} belongs to none of the compared methods ({', '.join(method_names)})",
                               "prefix it with a method, e.g. yarn.factor=8, or drop it")
        for method_name in targets:
            per_method[method_name][name] = value
    return per_method


def compare(model: str = DEFAULT_MODEL, methods: list[str] = DEFAULT_METHODS, target_length: int | str = "32k",
            lengths: list[int] = DEFAULT_LENGTHS, tasks: dict[str, dict] | None = None, checkpoints: list[str] = (),
            seed: int = 0, params: dict | None = None, output: str | Path = "ropekit-results/compare", device: str = "auto",
            dtype: str = "auto", progress: bool = True) -> dict:
    """Evaluate ``methods`` applied to ``model`` (and ``checkpoints`` as they are) on ``tasks`` at ``lengths``."""
    for name in methods:
        split_methods(name)  # a bad method name fails before anything loads
    per_method = split_params(params or {}, list(methods))
    runs = [RunSpec(model, None if m == "none" else m, per_method[m], target_length, label=m) for m in methods]
    runs += [RunSpec(c) for c in checkpoints]
    if not runs:
        raise RopekitError("nothing to compare", "pass --methods and/or --checkpoints")
    return evaluate(runs, tasks if tasks is not None else DEFAULT_TASKS, list(lengths), output, seed=seed, device=device,
                    dtype=dtype, kind="compare", progress=progress)


def summary_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """A table: one row per run; per task and length its score (% for accuracies, the value for perplexity)."""
    lengths = results["lengths"]
    header = ["run"]
    for task, meta in results["tasks"].items():
        header += [f"{task} {format_length(n)}" for n in lengths]
    rows = []
    for run in results["runs"]:
        row = [run["label"]]
        for task, meta in results["tasks"].items():
            for n in lengths:
                row.append(format_score(score_of(run, task, n), meta["higher_is_better"]))
        rows.append(row)
    return header, rows
