"""The ``ropekit`` commands above training and evaluation: the GPU study, the CPU lab, and LongRecipe's tools (the
checkpoint merge and sentence selection)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..embedded import DEFAULT_MODEL
from ..errors import RopekitError
from .common import _print_results, app, console, friendly, say


@app.command()
@friendly
def merge(a: str = typer.Argument(..., help="checkpoint A (its config and tokenizer are kept): directory or smollm2-135m"),
          b: str = typer.Argument(..., help="checkpoint B: directory or smollm2-135m"),
          weight: float = typer.Option(0.5, "--weight", "-w", help="w in w·A + (1 − w)·B"),
          output: Path = typer.Option(..., "--output", "-o", help="new directory for the merged checkpoint"),
          overwrite: bool = typer.Option(False, help="write into a non-empty output directory")):
    """Average two checkpoints of one architecture tensor by tensor, streamed shard by shard (LongRecipe's merge)."""
    from ..training.merge import merge as run_merge

    summary = run_merge(a, b, output, weight=weight, overwrite=overwrite)
    say("merged", f"{summary['tensors']} tensors in {summary['shards']} shard(s): {weight}·{a} + {1 - weight:g}·{b} → "
                  f"{output}{' (head untied)' if summary['untied_head'] else ''}")


data_app = typer.Typer(help="Prepare training data (LongRecipe's sentence selection).", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("select")
@friendly
def data_select(output: Path = typer.Option(..., "--output", "-o", help="rows as JSONL {\"text\": ...} for `ropekit train --data`"),
                data: str = typer.Option("shakespeare", help="shakespeare or synthetic (offline), or a .txt/.jsonl/.json/.parquet/directory"),
                target_length: str = typer.Option("32k", "--target-length", "-t", help="the target the rows train for"),
                fraction: float = typer.Option(0.3, help="tokens per row as a fraction of the target (the paper's 30%)"),
                train_length: Optional[str] = typer.Option(None, help="tokens per row (overrides --fraction)"),
                rule: str = typer.Option("digits", help="digits (the reference code's rule) or logit-change (the paper's analysis)"),
                p: float = typer.Option(0.5, "--p", help="digits: probability of keeping a sentence without a digit"),
                model: str = typer.Option(DEFAULT_MODEL, "--model", help="tokenizer, and the original model H for logit-change"),
                extended: Optional[str] = typer.Option(None, help="logit-change: the extended model H' (any ropekit checkpoint)"),
                top: float = typer.Option(0.2, help="logit-change: fraction of tokens kept as top-ranked"),
                window: Optional[str] = typer.Option(None, help="logit-change: scoring window (default: H's native length)"),
                rows: Optional[int] = typer.Option(None, help="stop at this many rows (digits: repeat passes with fresh draws)"),
                seed: int = typer.Option(0),
                overwrite: bool = typer.Option(False, help="replace an existing --output file"),
                device: str = typer.Option("auto")):
    """Select sentences (LongRecipe's impactful-token data) and write rows that each hold the token budget."""
    from ..training.selection import select_command

    report = select_command(output, data=data, target_length=target_length, fraction=fraction, train_length=train_length, rule=rule,
                            p=p, model=model, extended=extended, top=top, window=window, rows=rows, seed=seed, overwrite=overwrite,
                            device=device)
    say("wrote", f"{report.rows} rows → {output}; {report.summary()}")


@app.command()
@friendly
def study(preset: str = typer.Option("smollm2-64k", help="smollm2-64k (one GPU) or smollm2-cpu-smoke (the pipeline at CPU scale)"),
          output: Path = typer.Option(Path("ropekit-study"), "--output", "-o", help="directory; re-running resumes"),
          slice_name: Optional[str] = typer.Option(None, "--slice", help="run one slice of the preset (see --list); default: every slice"),
          only: Optional[str] = typer.Option(None, help="comma-separated run labels to run (default: all of the slice)"),
          report_only: bool = typer.Option(False, help="run nothing: merge every slice's results.json under --output into the report and study.md"),
          train_only: bool = typer.Option(False, help="train the rows and stop; a later run (same --output) evaluates them"),
          device: str = typer.Option("auto"),
          list_runs: bool = typer.Option(False, "--list", help="print the preset's slices and runs and exit")):
    """Every method under the same fine-tuning budget, in slices that each fit a short GPU window; each slice writes
    OUTPUT/<slice>/results.json, and the report and study.md merge every slice found (docs/results.md)."""
    from ..studies.study import get_preset, preset_slices
    from ..studies.study import study as run_study

    if list_runs:
        chosen = get_preset(preset)
        console.print(f"{chosen.name}: {chosen.description}", highlight=False)
        rows = {r.label: r for r in chosen.runs}
        for part in preset_slices(chosen):
            say(part.name, f"— {part.description}", "bold")
            for label in part.labels:
                row = rows[label]
                console.print(f"  {label:<20} {row.method:<14} target {row.target:<4} "
                              f"{'trained, ' + row.recipe + ', ' + row.strategy if row.train else 'training-free'}", highlight=False)
        return
    results = run_study(preset, output, device=device, only=[o for o in (only or "").split(",") if o.strip()] or None,
                        slice_name=slice_name, report_only=report_only, train_only=train_only)
    if results is None:
        say("trained", "; evaluate with the same command without --train-only")
        return
    _print_results(results)
    console.print(f"summary: {Path(output) / 'study.md'}; report: {Path(output) / 'report.html'}", highlight=False)


@app.command()
@friendly
def lab(output: Path = typer.Option(Path("ropekit-lab"), "--output", "-o", help="directory; re-running resumes"),
        quick: bool = typer.Option(False, "--quick", help="about 3 minutes on 2 CPU cores: shorter pre-training, 5 rows, lengths 1×–4×"),
        seeds: Optional[str] = typer.Option(None, help="pre-training seeds, e.g. 0,1,2 (each is a full lab; tables show the mean and "
                                            "the spread; default 0,1,2, --quick 0)"),
        rows: Optional[str] = typer.Option(None, help="comma-separated row labels (default: the budget's rows)"),
        device: str = typer.Option("auto"),
        items: Optional[str] = typer.Option(None, "--items", help="evaluation items: dev (design runs; --quick's default) or test "
                                            "(the committed table; the default budget's), drawn apart for each pre-training seed"),
        list_rows: bool = typer.Option(False, "--list", help="print the rows and exit")):
    """Train a small RoPE model from scratch (cached), extend it 4× with every method under one budget, and check
    each method's claim with binding, pass key, key-value retrieval and perplexity at 1×-8× its window
    (docs/lab.md). Three pre-training seeds: 63 minutes on 2 idle CPU cores (measured, docs/lab.md), about 21 per
    seed (--seeds 0); --quick about 3."""
    from ..studies.lab import ARMS, get_rows
    from ..studies.lab import lab as run_lab

    if list_rows:
        for row in get_rows():
            console.print(f"  {row.label:<16} {row.method:<12} {ARMS[row.arm]:<29} {row.strategy}", highlight=False)
        return
    try:
        seed_list = None if seeds is None else [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise RopekitError(f"--seeds {seeds!r} is not a list of integers", "write e.g. --seeds 0,1,2") from None
    results = run_lab(output, quick=quick, seeds=seed_list, rows=[r.strip() for r in (rows or "").split(",") if r.strip()] or None,
                      device=device, items=items)
    _print_results(results)
    from collections import Counter

    verdicts = ", ".join(f"{count} {verdict}" for verdict, count in Counter(c["verdict"] for c in results["claims"]).items())
    console.print(f"claims: {verdicts}; tables and evidence: {Path(output) / 'lab.md'}", highlight=False)

