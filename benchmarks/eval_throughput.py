"""Evaluation throughput: ropekit's passkey/NIAH scoring vs a plain transformers loop, same model and samples.

    python benchmarks/eval_throughput.py --length 4k --samples 4            # CPU
    python benchmarks/eval_throughput.py --length 32k --samples 20 --batch 4  # one GPU

plain: for each sample, model(prompt + answer) with full logits, then argmax over the answer positions (what a
hand-written loop does). ropekit: `score_answers` (logits only for the answer rows, equal-length rows batched).
Prints prompt tokens/s of both and the ratio, and checks both score every sample the same.
"""

from __future__ import annotations

import argparse
import time

import torch

import ropekit
from ropekit.eval.niah import default_depths, niah_cells
from ropekit.eval.passkey import passkey_samples
from ropekit.eval.scoring import score_answers
from ropekit.lengths import parse_length


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def plain_loop(model, samples) -> list[bool]:
    device = next(model.parameters()).device
    out = []
    for context, answer in samples:
        logits = model(torch.tensor([context + answer], device=device)).logits[0]
        predicted = logits[len(context) - 1 : len(context) + len(answer) - 1].argmax(-1).tolist()
        out.append(predicted == answer)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", default="eabf")
    parser.add_argument("--length", default="4k")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    model, tokenizer = ropekit.load_model(args.model)
    if args.method != "none":
        ropekit.extend(model, args.method, target_length="32k")
    length = parse_length(args.length)
    tasks = {
        "passkey": [(s.context, s.answer) for s in passkey_samples(tokenizer, length, args.samples, seed=0)],
        "niah": [],
    }
    cell = niah_cells(tokenizer, length, default_depths(args.samples), seed=0, trial=0, haystack="shakespeare")
    tasks["niah"] = [(cell["intro"] + cell["hay"][:p] + cell["needle"] + cell["hay"][p:] + cell["question"], cell["answer"]) for p in cell["points"]]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"eval throughput, {args.model} + {args.method}, {length} tokens x {args.samples} samples, batch {args.batch}; {device}")
    score_answers(model, tasks["passkey"][:1])  # warm-up
    for name, samples in tasks.items():
        tokens = sum(len(c) + len(a) for c, a in samples)
        sync(); start = time.perf_counter()
        plain = plain_loop(model, samples)
        sync(); t_plain = time.perf_counter() - start
        start = time.perf_counter()
        mine = [r.correct for r in score_answers(model, samples, batch_size=args.batch)]
        sync(); t_mine = time.perf_counter() - start
        print(f"  {name:<8} plain {tokens / t_plain:>9,.0f} tok/s   ropekit {tokens / t_mine:>9,.0f} tok/s   ratio {t_plain / t_mine:.2f}x   "
              f"same answers: {plain == mine} ({sum(mine)}/{len(mine)} correct)", flush=True)


if __name__ == "__main__":
    main()
