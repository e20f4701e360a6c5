"""The main job's overhead: `ropekit compare` (no arguments) against its unavoidable forward passes alone, in plain
transformers, same lengths, same process.

    python benchmarks/main_job.py                        # the default job: SmolLM2-135M, none/yarn/eabf at 4K and 12K
    python benchmarks/main_job.py --json main_job.json   # also write every number to a file
    python benchmarks/main_job.py --smoke                # a tiny random model in seconds (checks that the script runs)

The job is one call of :func:`ropekit.compare.compare` with its defaults (a fresh output directory, so nothing is
cached); its time is the ``seconds`` it records (loading, extending, probing the machine, evaluating, writing
results; a first run's download and conversion is recorded apart and not counted). The baseline is what no tool can
avoid: per method and length one forward of a plain ``AutoModelForCausalLM`` loaded from the same weights with the
method's RoPE parameters set in its config, over a window of the same text, computing output logits only for the
1,024 scored rows (``logits_to_keep`` with their indices). Plain transformers has no logit scale, so EABF's baseline
is its base change alone (θ × 50); the scale's cost is counted as ropekit's. The baseline runs before and after the
job and its mean is used, so a shared machine's drift over the run is split evenly. Ratio = job / baseline; the goal
is ≤ 1.15.

It also prints, per method and length, the perplexity the job reports (text after a planted pass key) next to the
plain window's perplexity of the same tokens (no key, no question) from the baseline forward; for EABF beyond the
native window the plain model lacks the scale, so that pair is not comparable and is marked so.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch


def plain_model(source, rope_parameters: dict, max_position_embeddings: int):
    """A plain transformers model from ``source`` (a directory) with the given RoPE parameters and no ropekit record."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    config.rope_parameters = copy.deepcopy(rope_parameters)
    config.max_position_embeddings = max_position_embeddings
    model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch.float32)
    return model.eval()


@torch.no_grad()
def plain_forward(model, window: list[int], scored: tuple[int, int]) -> tuple[float, float]:
    """One forward over ``window`` with logits for the rows that predict ``window[scored[0]:scored[1]]``.
    Returns (seconds, mean NLL of those tokens)."""
    ids = torch.tensor([window])
    start, end = scored
    rows = torch.arange(start - 1, end - 1)
    began = time.perf_counter()
    logits = model(input_ids=ids, logits_to_keep=rows, use_cache=False).logits[0].float()
    seconds = time.perf_counter() - began
    return seconds, torch.nn.functional.cross_entropy(logits, ids[0, start:end]).item()


def baseline(models: dict, tokens: list[int], samples: dict) -> dict:
    """Time every (method, length) plain forward once: {(method, length): (seconds, nll)}."""
    out = {}
    for (method, length), sample in samples.items():
        natural_end = sample["natural_end"]
        window = tokens[sample["offset"]:sample["offset"] + length]
        out[(method, length)] = plain_forward(models[method], window, (natural_end - sample["tail"], natural_end))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the measurements to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny random model and short lengths: checks the script in seconds")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    import ropekit
    from ropekit.studies.compare import DEFAULT_LENGTHS, DEFAULT_METHODS, compare
    from ropekit.corpus import text_tokens
    from ropekit.eval.passkey_ppl import window_sample
    from ropekit.lengths import format_length
    from ropekit.machine import describe_machine, machine
    from ropekit.models import default_model_dir

    work = Path(tempfile.mkdtemp(prefix="ropekit-main-job-"))
    if args.smoke:
        from ropekit.testing import save_tiny_checkpoint, tiny_tokenizer

        source = save_tiny_checkpoint(work / "tiny", vocab_size=len(tiny_tokenizer()))
        text = work / "text.txt"
        text.write_text("\n".join(f"line {i}: of man's first disobedience, and the fruit of that forbidden tree" for i in range(600)))
        model_arg, lengths, target, tail, corpus = str(source), [600, 900], 1024, 64, str(text)
        tasks = {"passkey_ppl": {"trials": 1, "tail": tail, "source": corpus}}
    else:
        source = default_model_dir()  # fetched and converted once, before anything is timed
        model_arg, lengths, target, tail, corpus, tasks = "smollm2-135m", list(DEFAULT_LENGTHS), "32k", 1024, "paradise_lost", None
    methods = list(DEFAULT_METHODS)
    facts = machine()
    print(f"main job overhead: {describe_machine(facts)}; methods {', '.join(methods)}; lengths "
          f"{', '.join(format_length(n) for n in lengths)}", flush=True)

    # The plain models: the same weights, each method's RoPE parameters (taken from ropekit's own extension).
    base, tokenizer = ropekit.load_model(source, device="cpu", dtype="float32")
    models = {}
    for method in methods:
        extended = base if method == "none" else ropekit.extend(copy.deepcopy(base), method, target_length=target)
        models[method] = plain_model(source, extended.config.rope_parameters, extended.config.max_position_embeddings)
    del base
    tokens = text_tokens(tokenizer, corpus, min_tokens=max(lengths))
    samples = {}  # the job's own samples (seed 0, trial 0): the plain windows score the same text tokens
    for method in methods:
        for length in lengths:
            rng = random.Random(f"passkey_ppl-0-{length}")
            depth, key = rng.random(), str(rng.randint(10000, 99999))
            sample = window_sample(tokenizer, tokens, length, 0, depth, key, tail)
            samples[(method, length)] = {"offset": 0, "tail": tail, "natural_end": sample["text"]}

    before = baseline(models, tokens, samples)
    print("baseline (plain forwards) done, running the job", flush=True)
    job_started = time.perf_counter()
    results = compare(model=model_arg, methods=methods, target_length=target, lengths=lengths, tasks=tasks,
                      output=work / "job", progress=False)
    job_wall = time.perf_counter() - job_started
    after = baseline(models, tokens, samples)

    forward = {key: (before[key][0] + after[key][0]) / 2 for key in before}
    total_forward = sum(forward.values())
    ratio = results["seconds"] / total_forward
    print(f"\n| method | length | plain forward (s) | job ppl | plain-window ppl, same tokens | difference |")
    print("|---|---|---|---|---|---|")
    rows = []
    native = 8192 if not args.smoke else 64
    for method in methods:
        run = next(r for r in results["runs"] if r["label"] == method)
        for length in lengths:
            job_ppl = run["results"]["passkey_ppl"][str(length)]["ppl"]
            plain_ppl = math.exp((before[(method, length)][1] + after[(method, length)][1]) / 2)
            comparable = not (method == "eabf" and length > native)
            diff = f"{100 * (job_ppl / plain_ppl - 1):+.2f}%" if comparable else "n/a (plain HF has no logit scale)"
            rows.append({"method": method, "length": length, "plain_forward_seconds": round(forward[(method, length)], 2),
                         "job_ppl": job_ppl, "plain_window_ppl": plain_ppl, "comparable": comparable})
            print(f"| {method} | {format_length(length)} | {forward[(method, length)]:.1f} | {job_ppl:.2f} | {plain_ppl:.2f} | {diff} |")
    print(f"\njob (`ropekit compare` defaults): {results['seconds']:.1f} s recorded ({job_wall:.1f} s around the call); "
          f"its forwards alone in plain transformers: {total_forward:.1f} s (before the job {sum(v[0] for v in before.values()):.1f} s, "
          f"after {sum(v[0] for v in after.values()):.1f} s)")
    print(f"overhead ratio: {ratio:.3f} (goal ≤ 1.15)")
    print(f"scores: " + "; ".join(f"{r['label']}: passkey " + "/".join(
        f"{r['results']['passkey_ppl'][str(n)]['score']:.0f}" for n in lengths) for r in results["runs"]))
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "job_seconds": results["seconds"], "job_wall_seconds": job_wall,
                                         "baseline_seconds": total_forward, "ratio": ratio, "rows": rows,
                                         "baseline_before": {f"{m}@{n}": v[0] for (m, n), v in before.items()},
                                         "baseline_after": {f"{m}@{n}": v[0] for (m, n), v in after.items()},
                                         "results": results}, indent=1, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
