"""NIAH grid timing: ropekit's shared-prefix scoring vs one full forward per cell, on the same model and grid.

    python benchmarks/niah_grid.py                                  # CPU default: 1K-4K x 5 depths
    python benchmarks/niah_grid.py --lengths 3k,6k,9k,12k,15k,18k,21k,24k,28k,32k --depths 10   # the GPU grid

Prints the wall time of both ways, the ratio, tokens/s and whether every cell got the same answer.
"""

from __future__ import annotations

import argparse
import time

import torch

import ropekit
from ropekit.eval.niah import default_depths, run_niah
from ropekit.lengths import parse_lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", default="eabf")
    parser.add_argument("--target-length", default="32k")
    parser.add_argument("--lengths", default="1k,2k,4k")
    parser.add_argument("--depths", type=int, default=5)
    args = parser.parse_args()

    model, tokenizer = ropekit.load_model(args.model)
    if args.method != "none":
        ropekit.extend(model, args.method, target_length=args.target_length)
    lengths, depths = parse_lengths(args.lengths), default_depths(args.depths)
    run_niah(model, tokenizer, lengths[:1], depths=depths[:2], progress=False)  # warm-up (kernels, corpus cache)
    timings, answers = {}, {}
    for share in (False, True):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = run_niah(model, tokenizer, lengths, depths=depths, share_prefix=share, progress=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        timings[share] = time.perf_counter() - start
        answers[share] = [r["predicted"] for n in lengths for r in result[n]["samples"]]
    cells = len(lengths) * len(depths)
    tokens = sum(lengths) * len(depths)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"NIAH grid {len(lengths)} lengths ({args.lengths}) x {len(depths)} depths = {cells} cells, {tokens:,} prompt tokens; "
          f"{args.model} + {args.method}; {device}")
    print(f"  one forward per cell : {timings[False]:8.1f} s  ({tokens / timings[False]:,.0f} tok/s)")
    print(f"  shared prefix        : {timings[True]:8.1f} s  ({tokens / timings[True]:,.0f} tok/s)")
    print(f"  speed-up             : {timings[False] / timings[True]:.2f}x; identical answers in every cell: {answers[False] == answers[True]}")


if __name__ == "__main__":
    main()
