"""Evaluation throughput: ropekit's passkey/NIAH scoring vs a plain transformers loop, same model and samples.

    python benchmarks/eval_throughput.py --length 4k --samples 4 --repeats 1       # CPU, SmolLM2
    python benchmarks/eval_throughput.py --random-weights --tokenizer DIR          # one GPU: 32K, 20 samples, batch 4
    python benchmarks/eval_throughput.py --smoke --json /tmp/x.json                # tiny model, seconds on a CPU

plain: for each sample, model(prompt + answer) with full logits, then argmax over the answer positions (what a
hand-written loop does). ropekit: `score_answers` (logits only for the answer rows, equal-length rows batched).
Timing needs only the model's shape: --random-weights builds SmolLM2-135M's shape with random weights and its
tokenizer (the answers are then wrong, but both ways must still give the same ones). Each way is timed over the
whole sample set: warm-up, then the median of --repeats, interleaved, with the spread.
summary.ratio_32k: plain time ÷ ropekit time over both tasks at 32K.
"""

from __future__ import annotations

import argparse

import torch
from _common import (Budget, Results, add_common_args, add_model_args, device_name, json_path, measure_interleaved, on_gpu,
                     setup, smoke_haystack, timing_model)

from ropekit.eval.niah import default_depths, niah_cells
from ropekit.eval.passkey import passkey_samples
from ropekit.eval.scoring import score_answers
from ropekit.lengths import format_length, parse_length


@torch.no_grad()
def plain_loop(model, samples) -> list[bool]:
    device = next(model.parameters()).device
    out = []
    for context, answer in samples:
        logits = model(torch.tensor([context + answer], device=device)).logits[0]
        predicted = logits[len(context) - 1 : len(context) + len(answer) - 1].argmax(-1).tolist()
        out.append(predicted == answer)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--length", default=None, help="GPU default 32k, CPU 4k")
    parser.add_argument("--samples", type=int, default=None, help="samples per task (GPU default 20, CPU 4)")
    parser.add_argument("--batch", type=int, default=None, help="ropekit's batch size (GPU default 4, CPU 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats of each way (GPU default 5, CPU 1)")
    parser.add_argument("--warmup", type=int, default=1)
    add_common_args(parser)
    args = parser.parse_args(argv)
    setup(args)
    gpu = on_gpu()
    nominal = 32768
    if args.smoke:
        args.length, args.samples, args.batch, args.repeats, args.haystack = "512", 3, 2, 2, smoke_haystack()
        nominal = 512
    length = parse_length(args.length or ("32k" if gpu else "4k"))
    samples = args.samples or (20 if gpu else 4)
    batch = args.batch or (4 if gpu else 1)
    repeats = args.repeats or (5 if gpu else 1)
    model, tokenizer = timing_model(args)
    results = Results("eval_throughput", json_path(args, "eval_throughput"), smoke=args.smoke,
                      stand_ins={"32k": nominal} if args.smoke else None)
    results.set("model", "SmolLM2-135M shape, random weights" if args.random_weights else ("tiny test model" if args.smoke else args.model))
    budget = Budget(args.budget)
    tasks = {"passkey": [(s.context, s.answer) for s in passkey_samples(tokenizer, length, samples, seed=0)]}
    cell = niah_cells(tokenizer, length, default_depths(samples), seed=0, trial=0, haystack=args.haystack)
    tasks["niah"] = [(cell["intro"] + cell["hay"][:p] + cell["needle"] + cell["hay"][p:] + cell["question"], cell["answer"]) for p in cell["points"]]
    print(f"eval throughput, {results.data['model']} + {args.method}, {format_length(length)} tokens x {samples} samples, "
          f"batch {batch}; {device_name()}; warm-up {args.warmup}, median of {repeats}")
    for name, task_samples in tasks.items():
        if budget.left() <= 0:
            results.add({"task": name, "length": length, "status": "skipped: time budget"})
            continue
        tokens = sum(len(c) + len(a) for c, a in task_samples)
        answers = {}

        def plain(task_samples=task_samples):
            answers["plain"] = plain_loop(model, task_samples)

        def ropekit(task_samples=task_samples):
            answers["ropekit"] = [r.correct for r in score_answers(model, task_samples, batch_size=batch)]

        t = measure_interleaved({"plain": plain, "ropekit": ropekit}, repeats=repeats, warmup=args.warmup)
        row = results.add({"task": name, "length": length, "status": "ok", "samples": len(task_samples), "batch": batch, "tokens": tokens,
                           "plain": t["plain"], "ropekit": t["ropekit"], "plain_tokens_per_s": tokens / t["plain"]["median_s"],
                           "ropekit_tokens_per_s": tokens / t["ropekit"]["median_s"], "ratio": t["plain"]["median_s"] / t["ropekit"]["median_s"],
                           "same_answers": answers["plain"] == answers["ropekit"], "correct": sum(answers["ropekit"])})
        print(f"  {name:<8} plain {row['plain_tokens_per_s']:>9,.0f} tok/s (±{t['plain']['spread']:.0%})   ropekit "
              f"{row['ropekit_tokens_per_s']:>9,.0f} tok/s (±{t['ropekit']['spread']:.0%})   ratio {row['ratio']:.2f}x   "
              f"same answers: {row['same_answers']} ({row['correct']}/{len(task_samples)} correct)", flush=True)
    ok = [r for r in results.rows if r["status"] == "ok" and r["length"] == nominal]
    complete = len(ok) == len(tasks)
    results.summarize({"ratio_32k": sum(r["plain"]["median_s"] for r in ok) / sum(r["ropekit"]["median_s"] for r in ok) if complete else None,
                       "same_answers": all(r["same_answers"] for r in ok) if ok else None})
    results.done()
    return results.data


if __name__ == "__main__":
    main()
