"""The recipe trade-off in the lab: retrieval gained at the target (4× the 128-token window) against perplexity kept
inside the window, for the same recipe choices benchmarks/keep_the_model.py measures on SmolLM2.

    python benchmarks/lab_keep_the_model.py                 # every arm, fine-tuning seeds 0 1 2 → docs/results/lab-keep-the-model.json
    python benchmarks/lab_keep_the_model.py --smoke         # a 40-step pre-training and 4-step arms (checks that the script runs)

Every arm starts from the first default lab's 2-layer pre-trained model (no binding rows; pre-training seed 0, cached), applies
EABF at 4× and trains 200 optimizer steps of 8 sequences of 512 tokens (the lab's ``ft-eabf`` budget); only the arm's
data, loss, learning rate and LoRA differ:

* ``answers-*``: retrieval sequences only (pass key and key–value, half each) with the loss on the answers alone —
  the shape of ``eabf-paper`` (synthetic conversations, loss on the answers);
* ``mix-*``: the lab's own training mixture (30% pass key, 60% key–value, 10% text, a shorter retrieval sequence
  followed by text a quarter of the time) with the loss on every token (answers weighted apart) — the shape of
  ``eabf-mix``;
* ``-high`` is the lab's learning rate (5e-4), ``-low`` a quarter of it with 20 warm-up steps, ``-lora`` rank 8 on
  every linear layer at the lab's rate × 4 (LoRA's usual larger rate), merged before evaluation, ``-distill`` the
  lab's rate plus the in-window distillation term towards the pre-trained model (weight 1, ``--distill 1``).

Two item sets: dev (evaluation seed 1), on which a design is chosen, and test (evaluation seed 1000, used by no design
run), which the table in docs/training.md reports. ``none`` is the pre-trained model unchanged (the control).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ARMS = {
    "answers-high": dict(answers_only=True, learning_rate=5e-4),
    "answers-low": dict(answers_only=True, learning_rate=1.25e-4, warmup=20),
    "mix-high": dict(answers_only=False, learning_rate=5e-4),
    "mix-low": dict(answers_only=False, learning_rate=1.25e-4, warmup=20),
    "mix-lora": dict(answers_only=False, learning_rate=2e-3, lora_r=8),
    "answers-distill": dict(answers_only=True, learning_rate=5e-4, distill=1.0),
    "mix-distill": dict(answers_only=False, learning_rate=5e-4, distill=1.0),
}
ITEMS = {"dev": 1, "test": 1000}  # evaluation seeds


def train_arm(arm: str, base: Path, budget, out: Path, seed: int) -> dict:
    """Extend the pre-trained model with EABF at 4×, train it as ``arm`` says, save it to ``out``."""
    from ropekit import extend, load_model, save_model
    from ropekit.studies.lab import EABF, Mix, train_lab

    spec = ARMS[arm]
    model, tokenizer = load_model(base, device="cpu", dtype="float32")
    native = model.config.max_position_embeddings
    extend(model, "eabf", target_length=budget.factor * native, **EABF)
    schedule = budget.extend_schedule(budget.factor * native)
    schedule = replace(schedule, learning_rate=spec["learning_rate"], warmup=spec.get("warmup", schedule.warmup))
    if spec["answers_only"]:
        schedule = replace(schedule, other_weight=0.0, mix=Mix(passkey=0.5, kv=0.5, full_length=1.0))
    trained = model
    if spec.get("lora_r"):
        from peft import LoraConfig, get_peft_model

        trained = get_peft_model(model, LoraConfig(r=spec["lora_r"], lora_alpha=2 * spec["lora_r"], target_modules="all-linear"))
    extra = {}
    if spec.get("distill"):  # the pre-trained model, unextended, teaches inside its window
        from ropekit.training.distill import Distill

        extra["distill"] = Distill(load_model(base, device="cpu", dtype="float32")[0], spec["distill"], native)
    summary = train_lab(trained, tokenizer, schedule, out / "train", seed, target_length=budget.factor * native, progress=False,
                        trainer=extra)
    if spec.get("lora_r"):
        model = trained.merge_and_unload()
    save_model(model, tokenizer, out / "model")
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--json", default="docs/results/lab-keep-the-model.json")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ropekit.eval.runner import RunSpec, evaluate
    from ropekit.machine import machine
    from ropekit.studies.lab import BUDGETS, Mix, Shape, pretrain

    # the model this benchmark was measured on: the first default lab's (2-layer, no binding rows), not today's default
    budget = replace(BUDGETS["default"], pretrain=replace(BUDGETS["default"].pretrain, mix=Mix()), shape=Shape())
    tasks = {"lab-passkey": {"trials": 100, "batch_size": 10}, "lab-kv": {"trials": 12, "batch_size": 12}, "ppl": {"windows": 32, "tail": 64}}
    if args.smoke:
        budget = replace(budget, name="smoke", pretrain=replace(budget.pretrain, steps=40, warmup=4), extend_steps=4)
        tasks = {"lab-passkey": {"trials": 4, "batch_size": 4}, "lab-kv": {"trials": 1, "batch_size": 9}, "ppl": {"windows": 2, "tail": 64}}
    shape = Shape()
    lengths = [shape.native, budget.factor * shape.native]
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() and not args.smoke else {}
    results.update({"budget": budget.name, "extend_steps": budget.extend_steps, "tasks": tasks, "lengths": lengths, "items": ITEMS,
                    "arms": ARMS, "machine": machine("cpu"), "command": "python benchmarks/lab_keep_the_model.py" + (" --smoke" if args.smoke else "")})
    runs = results.setdefault("runs", {})
    work = Path(tempfile.mkdtemp(prefix="lab-keep-the-model-"))
    base = pretrain(budget, shape, seed=0, progress=False)

    def write():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1, default=str))

    def scores(model_path: str, label: str) -> dict:
        out = {}
        for name, eval_seed in ITEMS.items():
            r = evaluate([RunSpec(model_path, label=label)], tasks, lengths, work / f"eval-{label}-{name}", seed=eval_seed,
                         device="cpu", kind="lab", progress=False)["runs"][0]["results"]
            out[name] = {task: {str(n): {k: cell.get(k) for k in ("score", "n", "far", "far_n")} for n, cell in by_length.items()}
                         for task, by_length in r.items()}
        return out

    if "none" not in runs:
        runs["none"] = {"arm": "none", "scores": scores(str(base), "none")}
        write()
    for seed in args.seeds:
        for arm in args.arms:
            key = f"{arm}/seed{seed}"
            if key in runs:
                continue
            started = time.time()
            summary = train_arm(arm, base, budget, work / key.replace("/", "-"), seed)
            runs[key] = {"arm": arm, "seed": seed, "final_loss": summary.get("final_loss"), "train_seconds": summary.get("seconds"),
                         "scores": scores(str(work / key.replace("/", "-") / "model"), key)}
            runs[key]["seconds"] = round(time.time() - started, 1)
            s = runs[key]["scores"]["dev"]
            print(f"{key}: dev ppl@1× {s['ppl'][str(lengths[0])]['score']:.3f}  passkey@4× {s['lab-passkey'][str(lengths[1])]['score']:.0f}  "
                  f"kv@4× {s['lab-kv'][str(lengths[1])]['score']:.0f}  ({runs[key]['seconds']:.0f} s)", flush=True)
            write()
    summary = {}
    for arm in ["none", *ARMS]:
        rows = [r for r in runs.values() if r["arm"] == arm]
        if not rows:
            continue
        summary[arm] = {}
        for name in ITEMS:
            cells = {"ppl_1x": [r["scores"][name]["ppl"][str(lengths[0])]["score"] for r in rows],
                     "passkey_4x": [r["scores"][name]["lab-passkey"][str(lengths[1])]["score"] for r in rows],
                     "kv_4x": [r["scores"][name]["lab-kv"][str(lengths[1])]["score"] for r in rows],
                     "passkey_1x": [r["scores"][name]["lab-passkey"][str(lengths[0])]["score"] for r in rows],
                     "kv_1x": [r["scores"][name]["lab-kv"][str(lengths[0])]["score"] for r in rows]}
            summary[arm][name] = {k: {"mean": round(statistics.mean(v), 3), "min": round(min(v), 3), "max": round(max(v), 3), "seeds": len(v)}
                                  for k, v in cells.items()}
    results["summary"] = summary
    write()
    for name in ITEMS:
        print(f"{name} items:")
        print("\n".join(table(results, name)))
    return results


def table(results: dict, items: str = "test") -> list[str]:
    """The Markdown table of docs/training.md on one item set: per arm, the mean over fine-tuning seeds (range)."""
    def cell(c, digits):
        return f"{c['mean']:.{digits}f} ({c['min']:.{digits}f}–{c['max']:.{digits}f})" if c["seeds"] > 1 else f"{c['mean']:.{digits}f}"

    lines = ["| arm | seeds | PPL 1× | pass key 1× | key–value 1× | pass key 4× | key–value 4× |", "|---|---|---|---|---|---|---|"]
    for arm, s in results.get("summary", {}).items():
        c = s[items]
        lines.append(f"| `{arm}` | {c['ppl_1x']['seeds'] if arm != 'none' else '—'} | {cell(c['ppl_1x'], 3)} | {cell(c['passkey_1x'], 0)} | "
                     f"{cell(c['kv_1x'], 0)} | {cell(c['passkey_4x'], 0)} | {cell(c['kv_4x'], 0)} |")
    return lines


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
