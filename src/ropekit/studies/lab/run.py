"""``ropekit lab`` top to bottom: :func:`lab` runs (or resumes) every pre-training seed
(:func:`ropekit.studies.lab.rows.run_seed`) on one item set (dev or test), combines them, renders the report,
checks the claims on the per-seed results (:mod:`ropekit.studies.lab.claims`: paired, per item) and writes
``results.json`` and ``lab.md`` (:mod:`ropekit.studies.lab.markdown`). The last room: nothing in the lab imports it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ...errors import RopekitError
from .claims import claim_checks
from .markdown import lab_markdown
from .model import Shape
from .rows import BUDGETS, ITEM_SETS, combine, evaluation_seed, get_rows, run_seed


def lab(output: str | Path = "ropekit-lab", quick: bool = False, seeds: tuple[int, ...] | list[int] | None = None, rows: list[str] | None = None,
        device: str = "auto", progress: bool = True, shape: Shape | None = None, items: str | None = None) -> dict:
    """Run (or resume) the lab; returns the combined results, also written to ``output/results.json`` with the
    report (``report.md``/``report.html``) and ``output/lab.md`` (tables with the spread over seeds, the papers'
    claims checked). One directory per pre-training seed (``output/seed-<k>``) holds that seed's own results.
    ``seeds``: the pre-training seeds (None: the budget's — 0, 1, 2 for the default, 0 for ``quick``).
    ``items``: the evaluation item set, ``dev`` or ``test`` (None: the budget's — dev for ``quick``, test for the
    default; :func:`ropekit.studies.lab.rows.evaluation_seed`); a directory keeps the item set it started with."""
    budget = BUDGETS["quick" if quick else "default"]
    if items is not None:
        if items not in ITEM_SETS:
            raise RopekitError(f"unknown item set {items!r}", f"choose one of: {', '.join(ITEM_SETS)}")
        budget = replace(budget, items=items)
    if shape is not None:
        budget = replace(budget, shape=shape)
    chosen = get_rows(rows or list(budget.rows or []))
    seeds = list(dict.fromkeys(int(s) for s in (budget.seeds if seeds is None else seeds)))
    if not seeds:
        raise RopekitError("no seed given", "pass e.g. --seeds 0,1,2")
    for seed in seeds:
        evaluation_seed(budget.items, seed)  # refuses a seed the item set has no items for, before anything runs
    out = Path(output).expanduser()
    previous = out / "lab.json"
    if previous.is_file():
        recorded = json.loads(previous.read_text())
        if recorded.get("budget") != budget.name:
            raise RopekitError(f"{out} holds a {recorded.get('budget')!r} lab, not a {budget.name!r} one",
                               "choose another --output, or run with the same --quick setting to resume it")
        held = recorded.get("items", "dev")  # labs written before item sets were scored on dev items (evaluation seed 0)
        if held != budget.items:
            raise RopekitError(f"{out} holds a lab scored on {held} items, not {budget.items} ones",
                               "choose another --output, or run with the same item set to resume it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "lab.json").write_text(json.dumps({"budget": budget.name, "items": budget.items, "seeds": seeds, "rows": [r.label for r in chosen]}))
    per_seed = [run_seed(budget, chosen, seed, out / f"seed-{seed}", device, progress) for seed in seeds]
    combined = combine(per_seed)
    from ..report import render

    (out / "results.json").write_text(json.dumps(combined, indent=1, default=str))
    render(out)
    checks = claim_checks(per_seed)  # paired verdicts need the per-item outcomes, which only the per-seed results keep
    combined["claims"] = checks
    (out / "results.json").write_text(json.dumps(combined, indent=1, default=str))
    (out / "lab.md").write_text(lab_markdown(combined, checks))
    combined["path"] = str(out / "results.json")
    return combined
