"""Run HERE after a device call: file what came back where the project keeps it, then re-render the study report.

    python benchmarks/gpu/collect.py FILES_AT [FILES_AT ...]      # the folder(s) holding what came back

* ``results-<slice>.json`` / ``partial-<slice>.json`` → merged into ``docs/results/smollm2-64k/<slice>/results.json``
  (a row measured again replaces its old entry; rows of a partial file are marked ``"partial": true``), then
  ``ropekit study --report-only`` re-renders ``docs/results/smollm2-64k/{study.md,report.md,plots/}``;
* ``<benchmark>-<gpu>.json`` → ``benchmarks/results/`` after a schema check (a resumed benchmark brings back the whole
  file, earlier rows included);
* ``trainlog-<label>.jsonl`` / ``training-<label>.json`` (a row's loss log and training summary, written as produced)
  → attached to that row of a partial file as its ``training``, and kept as
  ``docs/results/smollm2-64k/training/<label>.json`` (so a call killed during training still files its loss log);
* ``*.log`` → ``benchmarks/results/logs/`` or ``docs/results/smollm2-64k/logs/``.
Then commit those paths (never checkpoints: none come back).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import REQUIRED_SUMMARY, validate  # noqa: E402

PRESET = "smollm2-64k"


def collect(folders: list[Path], study_dir: Path, bench_dir: Path, render: bool = True) -> list[str]:
    from ropekit.eval.merge import merge_results
    from ropekit.eval.runner import _write_json

    done, study_changed = [], False
    paths = sorted(p for folder in folders for p in Path(folder).iterdir() if p.is_file())
    training = {}  # label → {summary…, "log": [...]}, from the files a call writes while it trains
    for path in paths:
        if path.name.startswith("trainlog-") and path.name.endswith(".jsonl"):
            label = path.name.removeprefix("trainlog-").removesuffix(".jsonl")
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            training.setdefault(label, {})["log"] = rows
        elif path.name.startswith("training-") and path.name.endswith(".json"):
            label = path.name.removeprefix("training-").removesuffix(".json")
            training.setdefault(label, {}).update({k: v for k, v in json.loads(path.read_text()).items() if k != "log"})
    for label, record in training.items():
        target = study_dir / "training" / f"{label}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"log": [], **record}, indent=1, default=str))
        done.append(f"training of {label} ({len(record.get('log', []))} logged steps"
                    f"{', summary' if 'steps' in record else ', no summary: cut before it ended'}) → {target}")
    for path in paths:
        name = path.name
        if name.startswith(("trainlog-", "training-")):
            continue
        if name.startswith(("results-", "partial-")) and name.endswith(".json"):
            slice_name = name.split("-", 1)[1].removesuffix(".json")
            new = json.loads(path.read_text())
            for step in new.get("skipped", []):  # steps a deadline skipped mark their run incomplete (files before the runner did)
                run = next((r for r in new["runs"] if r["label"] == step["label"]), None)
                if run is not None and step not in run.setdefault("skipped", []):
                    run["skipped"].append(step)
            if name.startswith("partial-"):
                for run in new["runs"]:
                    run["partial"] = True
                    if run["label"] in training and "training" not in run:
                        run["training"] = {"log": [], **training[run["label"]]}
            target = study_dir / slice_name / "results.json"
            sets = ([(slice_name, json.loads(target.read_text()))] if target.exists() else []) + [(slice_name, new)]
            merged = merge_results(sets, replace=True)
            merged.update({"preset": PRESET, "slice": slice_name})
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_json(target, merged)
            done.append(f"{name} → {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} "
                        f"({', '.join(r['label'] for r in new['runs'])})")
            study_changed = True
        elif name.endswith(".json") and name.split("-", 1)[0] in REQUIRED_SUMMARY:
            data = json.loads(path.read_text())
            problems = validate(data)
            bench_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, bench_dir / name)
            done.append(f"{name} → {bench_dir / name}" + (f" (schema problems: {'; '.join(problems)})" if problems else ""))
        elif name.endswith(".log"):
            logs = (study_dir if name.startswith(("study-", "stage-")) else bench_dir) / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, logs / name)
            done.append(f"{name} → {logs / name}")
        else:
            done.append(f"{name}: not recognised, left where it is")
    if study_changed and render:
        from ropekit.studies.study import get_preset, write_report

        write_report(get_preset(PRESET), study_dir)
        done.append(f"re-rendered {study_dir / 'study.md'} and {study_dir / 'report.md'}")
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--study-dir", type=Path, default=ROOT / "docs" / "results" / PRESET)
    parser.add_argument("--bench-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-render", action="store_true", help="file the results without re-rendering the report")
    args = parser.parse_args(argv)
    for line in collect(args.folders, args.study_dir, args.bench_dir, render=not args.no_render):
        print(line)


if __name__ == "__main__":
    main()
