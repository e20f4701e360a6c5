"""The evaluation task registry: every task is one :class:`Task` with one ``run`` function.

``run(model, tokenizer, lengths, seed=0, progress=True, **options) -> {length: result}`` evaluates the task at each
length (a token count) and returns, per length, a JSON-able dict with at least ``"score"`` (the task's headline
number: accuracy in %, perplexity, or a 0–100 metric) and ``"n"`` (samples), plus task-specific detail (per-sample
rows, per-depth or per-position breakdowns). Data generators are deterministic under the seed. Runs are cached per
(model, method, task, length, seed) by :mod:`ropekit.eval.runner`, so a task is only asked for missing lengths.
A task whose forward passes yield more than one headline number lists the others as ``also`` columns (each a key
of the per-length result), so tables and plots show them without a second pass.

Tasks register themselves when their module is imported (see ``ropekit/eval/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import RopekitError


@dataclass(frozen=True)
class Column:
    """One headline number of a task: ``result[key]`` at each length, shown as ``label`` in tables and plots."""

    key: str
    label: str
    metric: str
    higher_is_better: bool


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    metric: str  # what "score" is, e.g. "accuracy %" or "perplexity"
    higher_is_better: bool
    run: Callable[..., dict]
    options: dict = field(default_factory=dict)  # option name -> default
    kind: str = "synthetic"  # "synthetic" (generated here), "natural" (text corpus), "dataset" (local files), "probe"
    also: tuple[Column, ...] = ()  # further headline numbers of the same forward passes (e.g. passkey_ppl's perplexity)
    score_label: str | None = None  # the label of "score" (default: the task's name)
    # The scoring format: raised whenever a change makes new scores incomparable with old ones (prompt format, item
    # generator, success rule). Results carry it; merged results never put two versions in one column.
    version: int = 1

    @property
    def columns(self) -> tuple[Column, ...]:
        return (Column("score", self.score_label or self.name, self.metric, self.higher_is_better), *self.also)


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise AssertionError(f"task {task.name!r} registered twice")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise RopekitError(f"unknown task {name!r}", f"use one of: {', '.join(TASKS)}")
    return TASKS[name]


def evenly_spaced(count: int) -> list[float]:
    """``count`` fractions from 0 to 1 inclusive (needle depths, gold-item positions)."""
    return [round(i / (count - 1), 4) for i in range(count)] if count > 1 else [0.5]


def check_options(task: Task, options: dict) -> dict:
    unknown = sorted(set(options) - set(task.options))
    if unknown:
        raise RopekitError(f"unknown option {unknown[0]!r} for task {task.name!r}",
                           f"valid options: {', '.join(task.options) or 'none'}")
    return {**task.options, **options}
