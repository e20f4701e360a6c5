"""Tune the lab's binding task (``lab-bind``) on dev items: pre-train with the binding mixture, train the rows the
claims compare at the default budget, and score them at 1× and 4× the native window on dev items only (evaluation
seed 0; the committed table uses test items, which no run of this script touches).

    python benchmarks/lab_bind_tuning.py --out /tmp/lab-bind-dev                 # seed 0, the claims' rows
    python benchmarks/lab_bind_tuning.py --out DIR --task pairs=12,near=6       # the same models, a harder task

The targets (issue "the lab tells methods apart"): the pre-trained model ≥ 90% inside its window, no compared row
≥ 98% at 4×, and the compared rows apart by more than their intervals somewhere. Prints one line per row and length.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

ROWS = "none,ft-control,ft-pi,ft-abf,ft-eabf,ft-eabf-all,cream-pi,pose-pi,self-extend"


def main() -> None:
    from ropekit.studies.lab.model import DEEP, Shape
    from ropekit.studies.lab.rows import BIND_TASK, BUDGETS, get_rows, run_seed, with_bind

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", default=ROWS)
    parser.add_argument("--task", default="", help="lab-bind options, e.g. pairs=12,near=6,density=0.1")
    parser.add_argument("--multiples", default="1,4")
    parser.add_argument("--shape", choices=("deep", "small"), default="deep", help="the 4-layer model (default) or the 2-layer one")
    args = parser.parse_args()
    task = dict(BIND_TASK)
    for item in filter(None, args.task.split(",")):
        key, value = item.split("=")
        task[key] = float(value) if "." in value else (int(value) if value.isdigit() else value)
    budget = with_bind(BUDGETS["default"], task=task)
    budget = replace(budget, items="dev", shape=DEEP if args.shape == "deep" else Shape(), multiples=tuple(int(m) for m in args.multiples.split(",")),
                     tasks={k: v for k, v in budget.tasks.items()})
    out = Path(args.out) / args.shape
    # one directory per seed: the trained rows are reused and the evaluation cache is keyed by the task's options
    results = run_seed(budget, get_rows(args.rows.split(",")), args.seed, out / f"seed-{args.seed}")
    for run in results["runs"]:
        for task_name in ("lab-passkey", "lab-kv", "lab-bind", "ppl"):
            for length, cell in run["results"].get(task_name, {}).items():
                extra = {k: round(cell[k], 3) for k in ("far", "middle_third", "lured") if isinstance(cell.get(k), (int, float))}
                print(json.dumps({"row": run["label"], "task": task_name, "length": length, "score": round(cell["score"], 4),
                                  "n": cell.get("n"), **extra}))


if __name__ == "__main__":
    main()
