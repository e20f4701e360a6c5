"""``ropekit compare``: several methods applied to one base model (and/or several checkpoints), side by side.

Defaults are sized for a CPU: the embedded SmolLM2-135M (8K native), the original next to YaRN and Entropy-Aware
ABF at target 32K, at 4K (inside the window) and 12K (beyond it), task ``passkey_ppl``: one forward per method and
length over a window of *Paradise Lost* with a pass key planted in the text, scoring the perplexity of the text after
it and the key asked at the end. Any task and length grid works (``tasks``/``lengths``); results go through the same
resumable runner as ``ropekit eval``. :func:`conclusions` says in words what the numbers show.
"""

from __future__ import annotations

from pathlib import Path

from ..embedded import DEFAULT_MODEL
from ..errors import RopekitError
from ..eval.runner import RunSpec, columns_of, evaluate, format_score, score_of
from ..lengths import format_length
from ..registry import split_methods

DEFAULT_METHODS = ("none", "yarn", "eabf")
DEFAULT_LENGTHS = (4096, 12288)
# One forward per method and length. Untrained EABF misses a pass key in natural text (it is a fine-tuning method);
# the Landmark-style key in repeated filler flattered it (docs/evaluation.md), so that is no longer the default.
DEFAULT_TASKS = {"passkey_ppl": {"trials": 1}}
TRAIN_EABF = "ropekit train smollm2-135m --method eabf --target-length 32k"


def parse_entry(entry: str) -> tuple[str, dict]:
    """A compared method with its own parameters: ``"eabf:layers=entropy"`` → ``("eabf", {"layers": "entropy"})``
    (``name:key=value:key=value``), so one method can be compared with itself under other settings."""
    name, *pairs = [part.strip() for part in entry.split(":")]
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise RopekitError(f"{entry!r}: {pair!r} is not key=value", "write e.g. eabf:layers=entropy")
        params[key.strip()] = value.strip()
    split_methods(name)  # a bad method name fails before anything loads
    return name, params


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
    """Evaluate ``methods`` applied to ``model`` (and ``checkpoints`` as they are) on ``tasks`` at ``lengths``.

    A method entry may carry its own parameters, ``"eabf:layers=entropy"``; ``params`` apply to every entry that
    has them (``yarn.factor=8`` to the yarn entries only)."""
    entries = {entry: parse_entry(entry) for entry in methods}
    per_method = split_params(params or {}, [name for name, _ in entries.values()])
    runs = [RunSpec(model, None if name == "none" else name, {**per_method[name], **own}, target_length, label=entry)
            for entry, (name, own) in entries.items()]
    runs += [RunSpec(c) for c in checkpoints]
    if not runs:
        raise RopekitError("nothing to compare", "pass --methods and/or --checkpoints")
    return evaluate(runs, tasks if tasks is not None else DEFAULT_TASKS, list(lengths), output, seed=seed, device=device,
                    dtype=dtype, kind="compare", progress=progress)


def summary_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """A table: one row per run; per task column (e.g. passkey_ppl's passkey and ppl) and length its value (% for
    accuracies, the value for perplexity)."""
    lengths = results["lengths"]
    header = ["run"]
    cells = []  # (task, column)
    for task, meta in results["tasks"].items():
        for column in columns_of(meta):
            cells.append((task, column))
            header += [f"{column['label'] or task} {format_length(n)}" for n in lengths]
    rows = []
    for run in results["runs"]:
        row = [run["label"]]
        for task, column in cells:
            for n in lengths:
                row.append(format_score(score_of(run, task, n, column["key"]), column["higher_is_better"]))
        rows.append(row)
    return header, rows


def conclusions(results: dict) -> list[str]:
    """What the pass-key numbers say, per run, in words: where the key was retrieved inside and beyond the native
    window; for an untrained EABF (or ABF) row that misses it beyond the window, the command that trains one."""
    task = next((t for t in ("passkey_ppl", "passkey") if t in results["tasks"]), None)
    if task is None:
        return []
    lines = []
    for run in results["runs"]:
        native = run.get("native_length")
        beyond = [n for n in results["lengths"] if native and n > native and score_of(run, task, n) is not None]
        if not beyond:
            continue
        missed = [n for n in beyond if score_of(run, task, n) < 100]
        where = ", ".join(format_length(n) for n in beyond)
        if not missed:
            lines.append(f"{run['label']}: retrieves the pass key beyond its {format_length(native)} window ({where})")
            continue
        line = f"{run['label']}: does not retrieve the pass key beyond its {format_length(native)} window ({', '.join(format_length(n) for n in missed)})"
        if run.get("method") in ("eabf", "abf"):  # applied here, so untrained (a checkpoint is evaluated as loaded)
            line += f" — untrained; EABF is a fine-tuning method: {TRAIN_EABF}"
        lines.append(line)
    return lines


def timing_lines(results: dict) -> list[str]:
    """The machine, the job's wall time (and each run's), and a first run's setup time, as printed after a table."""
    from ..machine import describe_machine

    env = results["environment"]
    lines = [f"machine: {describe_machine(env['machine'])}" if "machine" in env else f"device: {env['device']}"]
    runs = ", ".join(f"{run['label']} {run['seconds']:.0f} s" for run in results["runs"] if "seconds" in run)
    lines.append(f"job: {results['seconds']:.0f} s wall ({runs})")
    if results.get("setup_seconds", 0) >= 1:
        lines.append(f"first-run setup (fetching and converting the model and corpus, not in the job's time): {results['setup_seconds']:.0f} s")
    return lines
