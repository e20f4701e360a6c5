"""One device call of the 64K study: train and evaluate one slice (or some of its rows), then copy what comes back.

    python benchmarks/gpu/study_call.py --slice headline --only eabf-32k --output /root/study --bring-back $OUT
    python benchmarks/gpu/study_call.py --smoke --slice headline --output /tmp/s --bring-back /tmp/out   # CPU dry run

A checkpoint never leaves the GPU machine: every row is trained and evaluated in the same call, and only the slice's
``results.json`` (scores, training summary and loss log of every row) comes back, as ``BRING_BACK/results-<slice>.json``.

**A call killed from outside keeps what it measured.** ``--deadline S`` is the time this call has (the GPU window's
remaining budget less the transfers): no training step and no evaluation step starts that would end after it (training
keeps ``--eval-reserve`` seconds for the evaluation), and at the deadline the call stops itself and brings back what it
has. While it runs, a copier puts every result into BRING_BACK the moment it is written — the evaluation's file after
every step as ``partial-<slice>.json``, each row's loss log (``trainlog-<label>.jsonl``, a line per optimizer step) and
training summary (``training-<label>.json``) — so even a SIGKILL leaves the finished parts there. On a clean finish
those give way to ``results-<slice>.json``.

``--smoke`` runs the same slice of the same preset — the same rows, methods, strategies, recipes and task set — on
a tiny random model with a byte-level tokenizer, short lengths, one training step and one trial per cell, so every
row's configuration is exercised on a CPU in seconds before GPU minutes are spent on it.
"""

from __future__ import annotations

import _thread
import argparse
import dataclasses
import json
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path

PRESET = "smollm2-64k"


def smoke_preset(preset, folder: Path):
    """The preset at toy scale: identical labels, methods, strategies, recipes, slices and task sets; a tiny model,
    its data files, lengths of a few hundred tokens, one step, one trial."""
    from ropekit.lengths import parse_length
    from ropekit.studies.study import Preset, Run, Slice
    from ropekit.testing import save_tiny_checkpoint, tiny_tokenizer
    from ropekit.training.recipes import get_recipe

    model = folder / "tiny-model"
    if not (model / "config.json").exists():
        save_tiny_checkpoint(model, vocab_size=len(tiny_tokenizer()))
    text, chat = folder / "text.txt", folder / "chat.jsonl"
    text.write_text(" ".join(f"Word{i % 50} follows word{i % 7}." for i in range(3000)))
    chat.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Remember the number {i}. " + "Filler sentence. " * 20 + "Which number?"},
        {"role": "assistant", "content": f"{i}."}]}) + "\n" for i in range(4)))
    scale = 8192 // 64  # SmolLM2's native window over the tiny model's

    def tiny_run(run: Run) -> Run:
        target = str(parse_length(run.target) // scale)
        if not run.train:
            return dataclasses.replace(run, target=target)
        native_trained = run.strategy != "contiguous"
        generated = get_recipe(run.recipe).data == "mix"  # the recipe's own generated data is what the row tests
        options = {**run.options, "samples": 2 if native_trained else (4 if generated else None), "max_steps": 1, "batch_size": 2,
                   "warmup_steps": 0, "data": None if generated else str(text if native_trained else chat)}
        if "micro_batch_size" in run.options:  # keep micro-batches of several samples in the dry run
            options["micro_batch_size"] = 2
        options = {k: v for k, v in options.items() if v is not None and k != "epochs"}
        for key in ("train_length", "replay_length"):  # explicit lengths (LongRecipe's 8K stage 0) shrink with the model
            if key in options:
                options[key] = str(parse_length(options[key]) // scale)
        return dataclasses.replace(run, target=target, options=options)

    def tiny_tasks(tasks: dict) -> dict:
        small = {"passkey": {"trials": 1}, "niah": {"depths": [0.0, 1.0], "haystack": str(text)},
                 "ppl": {"windows": 1, "tail": 32, "source": str(text)}, "kv": {"trials": 1, "positions": [0.5]},
                 "lines": {"trials": 1, "positions": [0.5]}, "entropy": {"documents": 1, "queries": 16, "source": str(text)}}
        return {name: small.get(name, options) for name, options in tasks.items()}

    lengths = (700, 800)  # LongChat-Lines needs about 650 byte-level tokens

    def tiny_task_lengths(task_lengths):  # extra lengths below the evaluated ones, as inside the native window
        return {task: (300, 500, *lengths) for task in task_lengths} if task_lengths else None

    return Preset(f"{preset.name}-smoke", f"{preset.description} (toy scale)", str(model), tuple(tiny_run(r) for r in preset.runs),
                  lengths, tiny_tasks(preset.tasks), {**preset.common, "precision": "fp32", "save_steps": 1000},
                  tuple(Slice(s.name, s.description, s.labels, lengths if s.lengths else None, tiny_tasks(s.tasks) if s.tasks else None,
                              tiny_task_lengths(s.task_lengths)) for s in preset.slices))


class Copier(threading.Thread):
    """Copies the slice's result files into ``back`` whenever they change (every ``every`` seconds), so a call killed
    from outside still returns what was finished."""

    def __init__(self, slice_dir: Path, back: Path, every: float = 2.0):
        super().__init__(daemon=True)
        self.slice_dir, self.back, self.every = slice_dir, back, every
        self.seen: dict[Path, float] = {}
        self.done = threading.Event()

    def sources(self) -> list[tuple[Path, str]]:
        found = [(self.slice_dir / "eval" / "results.json", f"partial-{self.slice_dir.name}.json")]
        for run in sorted((self.slice_dir / "runs").glob("*")) if (self.slice_dir / "runs").is_dir() else []:
            found += [(run / "training_log.jsonl", f"trainlog-{run.name}.jsonl"), (run / "training_summary.json", f"training-{run.name}.json")]
        return found

    def copy_changed(self) -> None:
        for source, name in self.sources():
            try:
                stamp = source.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if self.seen.get(source) != stamp:
                tmp = self.back / f".{name}.tmp"
                shutil.copy(source, tmp)
                tmp.replace(self.back / name)  # whole files only: a kill mid-copy leaves the previous version
                self.seen[source] = stamp

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.copy_changed()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.copy_changed()


def interrupt_at(when: float) -> threading.Timer:
    """At ``when`` (time.time()), interrupt the main thread: the call stops and brings back what it has."""
    timer = threading.Timer(max(0.0, when - time.time()), _thread.interrupt_main)
    timer.daemon = True
    timer.start()
    return timer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slice", required=True)
    parser.add_argument("--only", default=None, help="comma-separated labels of the slice (default: every row)")
    parser.add_argument("--output", required=True, help="the study directory on this machine")
    parser.add_argument("--bring-back", default=None, help="folder whose files come back (the device's $OUT)")
    parser.add_argument("--train-only", action="store_true", help="train the rows and stop (the next call, on the same machine, evaluates)")
    parser.add_argument("--smoke", action="store_true", help="the same slice at toy scale on a CPU")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds this call has: no step starts that would end after it; at it, the call stops and brings back what it has")
    parser.add_argument("--eval-reserve", type=float, default=0.0, help="seconds before the deadline that training leaves for the evaluation")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds after the deadline at which the call interrupts itself")
    args = parser.parse_args(argv)
    from ropekit.studies import study as study_module

    name = PRESET
    output = Path(args.output)
    if args.smoke:
        import torch

        torch.set_num_threads(1)
        preset = smoke_preset(study_module.get_preset(PRESET), output / "smoke-inputs")
        study_module.PRESETS[preset.name] = preset
        name = preset.name
    only = [label for label in (args.only or "").split(",") if label.strip()] or None
    started = time.time()
    stop_at = None if args.deadline is None else started + args.deadline
    copier = timer = None
    if args.bring_back:
        back = Path(args.bring_back)
        back.mkdir(parents=True, exist_ok=True)
        copier = Copier(output / args.slice, back)
        copier.start()
    if stop_at is not None:
        timer = interrupt_at(stop_at + args.grace)
        print(f"study call: deadline in {args.deadline:.0f} s (training leaves {args.eval_reserve:.0f} s for the evaluation)", flush=True)
    status = 0
    try:
        study_module.study(name, output, only=only, slice_name=args.slice, progress=not args.smoke, train_only=args.train_only,
                           stop_at=stop_at, eval_reserve=args.eval_reserve)
    except BaseException as err:  # the deadline (SIGINT), a time limit or a failure: still bring back what was measured
        print(f"study call stopped: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        if not isinstance(err, KeyboardInterrupt):
            traceback.print_exc()
        status = 1
    finally:
        if timer is not None:
            timer.cancel()
    print(f"study call: slice {args.slice}{' rows ' + ','.join(only) if only else ''}: {time.time() - started:.0f} s", flush=True)
    if copier is not None:
        copier.stop()
        final = output / args.slice / "results.json"
        if status == 0 and final.exists() and not args.train_only:
            shutil.copy(final, back / f"results-{args.slice}.json")
            for _, name in copier.sources():  # the slice's file holds them all now
                (back / name).unlink(missing_ok=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
