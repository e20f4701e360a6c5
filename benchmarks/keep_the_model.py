"""Which fine-tuning recipe keeps the model? SmolLM2-135M on CPU: each arm trains EABF at 32K with the GPU study's
budget shape (8 optimizer steps, the arm's learning rate, loss and data) at a CPU-sized training length (1K tokens,
batch 4, 32 samples), then the trained model is compared with the starting model on the before/after check's items.

    python benchmarks/keep_the_model.py                          # every arm, seeds 0 1 2 → docs/results/keep-the-model-cpu.json
    python benchmarks/keep_the_model.py --arms mix-2e-4 --seeds 0
    python benchmarks/keep_the_model.py --smoke                  # a tiny random model in seconds (checks that the script runs)

Two item sets, so the items that choose the default are not the items that report it:

* **dev** — *Paradise Regained* (4 windows of 1K, last quarter scored) and pass keys with seed 1: the arms are
  screened and the default recipe chosen on these;
* **test** — *Paradise Lost* and pass keys with seed 0: the before/after check's own items (``ropekit train``'s
  defaults), which the table in docs/training.md reports.

The starting model is scored once per item set; every trained model is scored on both. Results are written after
every run (a killed run keeps what it finished; a re-run skips finished arm × seed pairs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

# The GPU study's EABF row (8 steps, answer-only loss on synthetic conversations, lr 2e-4) and the levers against it.
ARMS = {
    "paper-2e-4": dict(recipe="eabf-paper", learning_rate=2e-4),  # the GPU study's setting: the collapse measured there
    "paper-2e-5": dict(recipe="eabf-paper", learning_rate=2e-5),  # the paper's own learning rate (chosen for 7B)
    "mix-2e-4": dict(recipe="eabf-mix", learning_rate=2e-4),  # half the samples plain text, loss on every token
    "mix-5e-5-warmup": dict(recipe="eabf-mix", learning_rate=5e-5, warmup_steps=2),
    "mix-lora-2e-4": dict(recipe="eabf-mix", learning_rate=2e-4, lora_r=8, lora_alpha=16),
    # after the first seed showed that a lower rate keeps less (the base change itself costs in-window perplexity,
    # see "extended" below, and training has to win it back): more plain text, and a higher rate
    "mix75-2e-4": dict(recipe="eabf-mix", learning_rate=2e-4, text_share=0.75),
    "mix-5e-4": dict(recipe="eabf-mix", learning_rate=5e-4),
    # in-window distillation towards the starting model (ropekit.training.distill) on the paper's data and on the mix
    "paper-distill-2e-4": dict(recipe="eabf-paper", learning_rate=2e-4, distill=1.0),
    "mix-distill-2e-4": dict(recipe="eabf-mix", learning_rate=2e-4, distill=1.0),
    # the two levers that kept the most on the first seed's dev items, together
    "mix75-distill-2e-4": dict(recipe="eabf-mix", learning_rate=2e-4, text_share=0.75, distill=1.0),
    # answers of natural text: the quote task (30-60 words copied from the context) instead of a few record tokens,
    # alone on the paper's data, and added to the default recipe's record kinds (eabf-keep is mix75-distill-2e-4)
    "paper-quote-2e-4": dict(recipe="eabf-paper", learning_rate=2e-4, synthetic_tasks="quote"),
    "keep-quote-2e-4": dict(recipe="eabf-mix", learning_rate=2e-4, text_share=0.75, distill=1.0,
                            synthetic_tasks="fact,key,kv,line,quote"),
}
BUDGET = dict(target_length="32k", train_length="1k", samples=32, batch_size=4, max_steps=8, min_tokens=0)
ITEMS = {"dev": {"text": "paradise_regained", "seed": 1}, "test": {"text": "paradise_lost", "seed": 0}}
LENGTH, WINDOWS, TRIALS = 1024, 4, 10


def item_text(name: str) -> str:
    """A named corpus, or Paradise Regained's file in the embedded Milton corpus (the dev text)."""
    if name != "paradise_regained":
        return name
    from ropekit.corpus import corpus_dir

    return str(corpus_dir() / "miltondata" / "texts" / "paradise_regained_gut.txt")


def score_all(model, tokenizer, length: int, windows: int, trials: int) -> dict:
    from ropekit.eval.check import score

    return {name: score(model, tokenizer, [length], item_text(spec["text"]), windows, trials, spec["seed"])[length]
            for name, spec in ITEMS.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--json", default="docs/results/keep-the-model-cpu.json")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--smoke", action="store_true", help="a tiny random model, 2 steps, 256 tokens")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ropekit import load_model
    from ropekit.machine import machine
    from ropekit.training.api import TrainOptions, train

    model_name, budget, length, windows, trials = "smollm2-135m", dict(BUDGET), LENGTH, WINDOWS, TRIALS
    work = Path(tempfile.mkdtemp(prefix="keep-the-model-"))
    if args.smoke:
        from ropekit.testing import NATIVE, save_tiny_checkpoint, tiny_tokenizer

        model_name = str(work / "tiny")
        save_tiny_checkpoint(model_name, vocab_size=len(tiny_tokenizer()))
        budget.update(target_length=4 * NATIVE, train_length=NATIVE, samples=8, batch_size=2, max_steps=2)
        length, windows, trials = NATIVE, 2, 2
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() and not args.smoke else {}
    results.update({"model": model_name, "budget": budget, "items": ITEMS, "length": length, "windows": windows, "trials": trials,
                    "machine": machine("cpu"), "command": "python benchmarks/keep_the_model.py" + (" --smoke" if args.smoke else "")})
    runs = results.setdefault("runs", {})
    if "before" not in results:
        model, tokenizer = load_model(model_name, device="cpu")
        results["before"] = score_all(model, tokenizer, length, windows, trials)
        del model

    def write():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))

    if "extended" not in results:  # the control: EABF applied, not trained (what training starts from)
        from ropekit import extend

        model, tokenizer = load_model(model_name, device="cpu")
        extend(model, "eabf", target_length=budget["target_length"])
        results["extended"] = score_all(model, tokenizer, length, windows, trials)
        del model
    write()
    for seed in args.seeds:
        for arm in args.arms:
            key = f"{arm}/seed{seed}"
            if key in runs:
                continue
            started = time.time()
            out = work / key.replace("/", "-")
            summary = train(TrainOptions(model=model_name, output=out, seed=seed, check=False, progress=False, device="cpu",
                                         gradient_checkpointing=False, save_steps=100000, **budget, **ARMS[arm]))
            trained_seconds = time.time() - started
            model, tokenizer = load_model(str(out), device="cpu")
            after = score_all(model, tokenizer, length, windows, trials)
            del model
            runs[key] = {"arm": arm, "seed": seed, "options": ARMS[arm], "after": after, "final_loss": summary.get("final_loss"),
                         "train_seconds": round(trained_seconds, 1), "seconds": round(time.time() - started, 1)}
            ppl = {name: after[name]["ppl"] / results["before"][name]["ppl"] - 1 for name in ITEMS}
            print(f"{key}: ppl change dev {100 * ppl['dev']:+.1f}%  test {100 * ppl['test']:+.1f}%  "
                  f"pass keys dev {after['dev']['passkey']} test {after['test']['passkey']}  ({runs[key]['seconds']:.0f} s)", flush=True)
            write()
    # per arm: mean and spread of the perplexity change over seeds, on each item set
    summary = {}
    for arm in ARMS:
        rows = [r for r in runs.values() if r["arm"] == arm]
        if not rows:
            continue
        summary[arm] = {}
        for name in ITEMS:
            changes = [r["after"][name]["ppl"] / results["before"][name]["ppl"] - 1 for r in rows]
            summary[arm][name] = {"seeds": len(rows), "ppl_change_mean": round(statistics.mean(changes), 4),
                                  "ppl_change_min": round(min(changes), 4), "ppl_change_max": round(max(changes), 4),
                                  "passkey": [r["after"][name]["passkey"] for r in rows]}
    results["summary"] = summary
    write()
    print("\n".join(table(results)))
    return results


def table(results: dict) -> list[str]:
    """The Markdown table of docs/training.md: per arm, the in-window perplexity change on each item set (mean and
    range over seeds) and the pass keys kept."""
    def cell(changes):
        mean = f"{100 * changes['ppl_change_mean']:+.1f}%"
        if changes["seeds"] == 1:
            return mean
        return f"{mean} ({100 * changes['ppl_change_min']:+.1f} to {100 * changes['ppl_change_max']:+.1f})"

    b = results["before"]
    lines = [f"| arm | seeds | ppl change, dev (before {b['dev']['ppl']:.1f}) | ppl change, test (before {b['test']['ppl']:.1f}) | pass keys, test |",
             "|---|---|---|---|---|"]
    if "extended" in results:
        e = results["extended"]
        lines.append(f"| EABF applied, not trained | — | {100 * (e['dev']['ppl'] / b['dev']['ppl'] - 1):+.1f}% | "
                     f"{100 * (e['test']['ppl'] / b['test']['ppl'] - 1):+.1f}% | {e['test']['passkey']}/{results['trials']} |")
    for arm, s in results.get("summary", {}).items():
        keys = ", ".join(f"{k}/{results['trials']}" for k in s["test"]["passkey"])
        lines.append(f"| `{arm}` | {s['test']['seeds']} | {cell(s['dev'])} | {cell(s['test'])} | {keys} |")
    return lines


if __name__ == "__main__":
    main()
