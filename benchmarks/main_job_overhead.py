"""Does a change slow the CPU main job? The same work with ropekit before and after, measured side by side.

    python benchmarks/main_job_overhead.py --before main --json FILE     # the main job's forwards (SmolLM2, minutes)
    python benchmarks/main_job_overhead.py --before main --job compare   # the whole `ropekit compare` (≈ 15 CPU-minutes each)
    python benchmarks/main_job_overhead.py --smoke --json /tmp/x.json    # a tiny random model, seconds

``--before REV``: ropekit's ``src/`` at that git revision is extracted into a temporary folder. Every measurement runs
in its own fresh interpreter with ``PYTHONPATH`` set to the "before" or the "after" (this checkout's) ``src/``,
alternating before/after for ``--rounds`` rounds, so drifting load from other processes hits both alike. The figure
is CPU time (user + sys of the timed part; on a shared machine it is steadier than wall time), median over rounds;
ratio = after / before (1.00: no change; the goal for a training-only feature is within ±5%).

Jobs:
  forwards — what makes `ropekit compare`'s time: SmolLM2-135M (fp32, 2 threads) extended to 32K with YaRN and with
             EABF (the logit scale runs in ropekit's attention wrapper), no-grad forwards at 4K and 12K tokens after
             one warm-up forward. ``logits_to_keep=1`` (a 12K × 49K logit matrix would take 2.4 GB; the wrapper's cost
             does not depend on it, so leaving the output layer out makes a slowdown look larger, not smaller).
  compare  — the child runs ``ropekit compare`` (no arguments but ``--output``) and reports its CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, sys, time
args = json.loads(sys.argv[1])
import torch
torch.set_num_threads(2)
import ropekit
assert ropekit.__file__.startswith(args["src"]), (ropekit.__file__, args["src"])

def build(method):
    if args["smoke"]:
        from ropekit.testing import tiny_model
        model = tiny_model("llama")
    else:
        model, _ = ropekit.load_model(device="cpu", dtype="float32")
    return ropekit.extend(model, method, target_length=args["target"]).eval()

rows = []
for method in args["methods"]:
    model = build(method)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (1, max(args["lengths"])), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids[:, :256], use_cache=False, logits_to_keep=1)  # warm-up
        for length in args["lengths"]:
            cpu, wall = time.process_time(), time.perf_counter()
            model(ids[:, :length], use_cache=False, logits_to_keep=1)
            rows.append({"method": method, "length": length, "cpu_s": time.process_time() - cpu,
                         "wall_s": time.perf_counter() - wall})
print("ROWS " + json.dumps(rows))
'''


def extract_src(revision: str, folder: Path) -> Path:
    """ropekit's src/ at ``revision`` (git archive), unpacked into ``folder``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision, "src"], capture_output=True, check=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src"


def run_child(src: Path, job: str, params: dict, scratch: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    if job == "forwards":
        done = subprocess.run([sys.executable, "-c", CHILD, json.dumps({**params, "src": str(src.resolve())})], env=env,
                              capture_output=True, text=True, cwd=scratch)
        if done.returncode:
            raise SystemExit(f"the child failed:\n{done.stderr[-3000:]}")
        return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("ROWS "))[5:])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    command = [sys.executable, "-m", "ropekit", "compare", "--output", str(scratch / f"compare-{time.time_ns()}")]
    subprocess.run(command, env=env, check=True, cwd=scratch, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return [{"method": "compare", "length": 0, "cpu_s": cpu, "wall_s": time.perf_counter() - wall}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="main", help="git revision of the baseline (default: main)")
    parser.add_argument("--job", choices=("forwards", "compare"), default="forwards")
    parser.add_argument("--methods", default="yarn,eabf")
    parser.add_argument("--lengths", default="4k,12k")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a tiny random model at 256 tokens, one round (seconds)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from ropekit.lengths import parse_lengths

    lengths = [256] if args.smoke else parse_lengths(args.lengths)
    rounds = 1 if args.smoke else args.rounds
    params = {"methods": args.methods.split(","), "lengths": lengths, "target": 256 * 4 if args.smoke else 32768, "smoke": args.smoke}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        sources = {"before": extract_src(args.before, scratch / "before"), "after": ROOT / "src"}
        measured = {name: [] for name in sources}
        for number in range(rounds):
            for name, src in sources.items():
                rows = run_child(src, args.job, params, scratch)
                measured[name].append(rows)
                print(f"round {number + 1}/{rounds} {name}: " + ", ".join(f"{r['method']} {r['length']}: {r['cpu_s']:.2f} s CPU" for r in rows),
                      flush=True)
    table = []
    for i, row in enumerate(measured["after"][0]):
        before = [run[i]["cpu_s"] for run in measured["before"]]
        after = [run[i]["cpu_s"] for run in measured["after"]]
        table.append({"method": row["method"], "length": row["length"], "before_cpu_s": before, "after_cpu_s": after,
                      "ratio": round(statistics.median(after) / statistics.median(before), 4)})
    total = [sum(r["cpu_s"] for r in run) for run in measured["before"]], [sum(r["cpu_s"] for r in run) for run in measured["after"]]
    summary = {"ratio_total": round(statistics.median(total[1]) / statistics.median(total[0]), 4),
               "max_ratio": max(r["ratio"] for r in table), "min_ratio": min(r["ratio"] for r in table)}
    for row in table:
        print(f"{row['method']:>8} {row['length']:>6}: before {statistics.median(row['before_cpu_s']):.2f} s, "
              f"after {statistics.median(row['after_cpu_s']):.2f} s CPU (median of {rounds}), ratio {row['ratio']:.3f}")
    print(f"total: ratio {summary['ratio_total']:.3f} (after / before)")
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "main_job_overhead", "command": "python " + " ".join(sys.argv), "smoke": args.smoke, "job": args.job,
            "before": args.before, "before_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before],
                                                                   capture_output=True, text=True).stdout.strip(),
            "after": subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                                           capture_output=True, text=True).stdout.strip(),
            "machine": f"{os.cpu_count()} CPU cores", "load_average": os.getloadavg(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": round(time.perf_counter() - started, 1),
            "rows": table, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
