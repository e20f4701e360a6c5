"""NIAH grid timing: ropekit's ways of scoring a needle-in-a-haystack grid, on the same model and grid.

    python benchmarks/niah_grid.py --repeats 1                       # CPU default: SmolLM2, 1K-4K x 5 depths
    python benchmarks/niah_grid.py --random-weights --tokenizer DIR  # one GPU: 10 lengths up to 32K x 10 depths
    python benchmarks/niah_grid.py --smoke --json /tmp/x.json        # tiny model, seconds on a CPU

Ways (each the whole grid, warm-up then the median of --repeats, interleaved, with the spread):
  per-cell   one forward per cell, batch 1 (what `ropekit eval --tasks niah` does by default)
  batched    the cells of one length in batches of --batch (`--task-option niah.batch_size=N`)
  shared     one KV cache of the haystack prefix per length, deepest needle first (`niah.share_prefix=true`)
Every way must give the same answer in every cell. Timing needs only the model's shape (--random-weights).
summary.seconds: the fastest way's time for the grid (goal ≤ 30 s for 10 × 10 up to 32K on one H100).
"""

from __future__ import annotations

import argparse

from _common import (Budget, Results, add_common_args, add_model_args, device_name, json_path, measure_interleaved, on_gpu,
                     setup, smoke_haystack, timing_model)

from ropekit.eval.niah import default_depths, run_niah
from ropekit.lengths import parse_lengths

GPU_LENGTHS = "3k,6k,9k,12k,15k,18k,21k,24k,28k,32k"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--lengths", default=None, help=f"GPU default {GPU_LENGTHS}; CPU 1k,2k,4k")
    parser.add_argument("--depths", type=int, default=None, help="GPU default 10, CPU 5")
    parser.add_argument("--batch", type=int, default=None, help="batch of the batched way (default: every depth of a length at once)")
    parser.add_argument("--ways", default="per-cell,batched,shared")
    parser.add_argument("--repeats", type=int, default=None, help="GPU default 5, CPU 1")
    parser.add_argument("--warmup", type=int, default=1)
    add_common_args(parser)
    args = parser.parse_args(argv)
    setup(args)
    gpu = on_gpu()
    if args.smoke:
        args.lengths, args.depths, args.repeats, args.haystack = "450,600", 3, 2, smoke_haystack()
    lengths = parse_lengths(args.lengths or (GPU_LENGTHS if gpu else "1k,2k,4k"))
    depths = default_depths(args.depths or (10 if gpu else 5))
    batch = args.batch or len(depths)
    repeats = args.repeats or (5 if gpu else 1)
    model, tokenizer = timing_model(args)
    results = Results("niah_grid", json_path(args, "niah_grid"), smoke=args.smoke)
    results.set("model", "SmolLM2-135M shape, random weights" if args.random_weights else ("tiny test model" if args.smoke else args.model))
    budget = Budget(args.budget)
    options = {"per-cell": {"batch_size": 1}, "batched": {"batch_size": batch}, "shared": {"share_prefix": True}}
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    answers: dict[str, list] = {}

    def grid(way: str):
        def run():
            result = run_niah(model, tokenizer, lengths, depths=depths, haystack=args.haystack, progress=False, **options[way])
            answers[way] = [r["predicted"] for n in lengths for r in result[n]["samples"]]
        return run

    run_niah(model, tokenizer, lengths[:1], depths=depths[:2], haystack=args.haystack, progress=False)  # corpus cache, kernels
    cells, tokens = len(lengths) * len(depths), sum(lengths) * len(depths)
    print(f"NIAH grid {len(lengths)} lengths x {len(depths)} depths = {cells} cells, {tokens:,} prompt tokens; "
          f"{results.data['model']} + {args.method}; {device_name()}; warm-up {args.warmup}, median of {repeats}")
    timed = measure_interleaved({w: grid(w) for w in ways}, repeats=repeats, warmup=args.warmup) if budget.left() > 0 else {}
    reference = answers.get(ways[0])
    for way in ways:
        if way not in timed:
            results.add({"way": way, "status": "skipped: time budget"})
            continue
        t = timed[way]
        results.add({"way": way, "status": "ok", "options": options[way], "cells": cells, "tokens": tokens, "lengths": lengths,
                     "depths": len(depths), "grid": t, "seconds": t["median_s"], "tokens_per_s": tokens / t["median_s"],
                     "same_answers_as_first": answers[way] == reference})
        print(f"  {way:<9} {t['median_s']:8.2f} s (±{t['spread']:.0%})  {tokens / t['median_s']:>10,.0f} tok/s  "
              f"same answers: {answers[way] == reference}", flush=True)
    ok = [r for r in results.rows if r["status"] == "ok"]
    best = min(ok, key=lambda r: r["seconds"]) if ok else None
    default = next((r for r in ok if r["way"] == "per-cell"), None)
    results.summarize({"seconds": best["seconds"] if best else None, "way": best["way"] if best else None,
                       "default_seconds": default["seconds"] if default else None, "cells": cells,
                       "same_answers": all(r["same_answers_as_first"] for r in ok) if ok else None, "goal_seconds": 30})
    results.done()
    return results.data


if __name__ == "__main__":
    main()
