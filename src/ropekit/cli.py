"""The ``ropekit`` command line: a thin layer over the Python API (every command calls one API function)."""

from __future__ import annotations

import functools
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .embedded import DEFAULT_MODEL
from .errors import RopekitError

app = typer.Typer(help="Extend the context window of RoPE-based Hugging Face LLMs, fine-tune them, and prove it works.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True)


def friendly(command):
    """Turn a RopekitError into one red line and exit status 2, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RopekitError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130)

    return wrapper


def parse_params(items: list[str] | None) -> dict:
    """``["factor=4", "layers=all"]`` → ``{"factor": "4", "layers": "all"}`` (types are checked by each method)."""
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RopekitError(f"--param {item!r} is not key=value", "write e.g. --param beta_fast=32")
        params[key.strip()] = value.strip()
    return params


def _json_out(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
@friendly
def methods(as_json: bool = typer.Option(False, "--json", help="print the registry as JSON")):
    """List every method, its side (frequency / attention), parameters and defaults."""
    from . import list_methods

    rows = list_methods()
    if as_json:
        return _json_out(rows)
    table = Table(title="ropekit methods (combine attention-side ones with a frequency one using +, e.g. yarn+logscale)")
    for column in ("method", "side", "what it does", "parameters (default)", "reference"):
        table.add_column(column, overflow="fold")
    for row in rows:
        params = ", ".join(f"{p['name']}={p['default'] if p['default'] is not None else 'auto'}" for p in row["params"]) or "-"
        table.add_row(row["name"], row["side"], row["summary"], params, row["reference"])
    console.print(table)


@app.command()
@friendly
def info(model: str = typer.Argument(DEFAULT_MODEL, help="directory, .gguf file, hub id, or smollm2-135m"),
         as_json: bool = typer.Option(False, "--json", help="print as JSON")):
    """Show a model's native length, RoPE configuration, attention backend and any ropekit extension."""
    from . import describe, load_model

    loaded, _ = load_model(model, device="cpu", dtype="float32")
    facts = describe(loaded)
    if as_json:
        return _json_out(facts)
    table = Table(show_header=False, title=str(model))
    for key, value in facts.items():
        table.add_row(key, json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value))
    console.print(table)


@app.command()
@friendly
def extend(model: str = typer.Argument(..., help="directory, .gguf file, hub id, or smollm2-135m"),
           method: str = typer.Option(..., "--method", "-m", help="method name, or several joined by + (see `ropekit methods`)"),
           target_length: Optional[str] = typer.Option(None, "--target-length", "-t", help="e.g. 32k or 32768"),
           param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="method parameter key=value (repeatable)"),
           output: Path = typer.Option(..., "--output", "-o", help="new directory for the extended checkpoint"),
           overwrite: bool = typer.Option(False, help="write into a non-empty output directory"),
           dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16"),
           allow_untested: bool = typer.Option(False, help="allow a model type ropekit has not been tested with")):
    """Extend a model with a method and save a checkpoint that `ropekit.load_model` restores exactly
    (plain transformers loads its RoPE frequencies)."""
    from . import extend as extend_model
    from . import load_model, save_model

    params = parse_params(param)
    out = output.expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:  # fail before the (slow) load
        raise RopekitError(f"output directory {out} exists and is not empty", "choose a new directory or pass --overwrite")
    loaded, tokenizer = load_model(model, device="cpu", dtype=dtype)
    extend_model(loaded, method, target_length=target_length, allow_untested=allow_untested, **params)
    save_model(loaded, tokenizer, out, overwrite=overwrite)
    record = loaded.config.ropekit
    console.print(f"[green]saved[/] {out}  method={record['method']}  native={record['native_length']}  "
                  f"target={record['target_length']}  rope={json.dumps(loaded.config.rope_parameters)}", highlight=False)


@app.command()
@friendly
def compare(model: str = typer.Option(DEFAULT_MODEL, "--model", help="base model: directory, .gguf, hub id or smollm2-135m"),
            methods: str = typer.Option("none,yarn,eabf", help="comma-separated methods (a+b combines)"),
            target_length: str = typer.Option("32k", "--target-length", "-t", help="target window for every method"),
            lengths: str = typer.Option("4k,12k", help="evaluation lengths; the CPU default stays ≤ 12K tokens"),
            tasks: str = typer.Option("passkey,ppl", help="passkey, ppl"),
            trials: int = typer.Option(1, min=1, help="passkey trials per length (depths spread by the seed)"),
            windows: int = typer.Option(1, min=1, help="perplexity windows per length"),
            param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="method parameter, e.g. yarn.factor=8 (repeatable)"),
            seed: int = typer.Option(0, help="seed for keys, depths and windows"),
            output: Optional[Path] = typer.Option(None, "--output", "-o", help="directory for results.json (default ./ropekit-results/compare-<time>)"),
            device: str = typer.Option("auto", help="auto, cpu, cuda"),
            dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")):
    """Compare the original model with training-free extensions on passkey retrieval and perplexity.

    With no arguments: SmolLM2-135M (8K native), the original next to YaRN and Entropy-Aware ABF at target 32K,
    evaluated at 4K and 12K tokens: about 7.5 minutes on 2 CPU cores. On a GPU use e.g.
    --methods none,ntk,dynamic,yarn,eabf --lengths 4k,8k,16k,32k --trials 20 --windows 3.
    """
    from .compare import compare as run_compare
    from .compare import summary_rows
    from .lengths import parse_lengths

    out = output or Path("ropekit-results") / datetime.now().strftime("compare-%Y%m%d-%H%M%S")
    results = run_compare(model=model, methods=[m for m in methods.split(",") if m.strip()], target_length=target_length,
                          lengths=parse_lengths(lengths), tasks=[t.strip() for t in tasks.split(",") if t.strip()], trials=trials,
                          windows=windows, seed=seed, params=parse_params(param), output=out, device=device, dtype=dtype)
    header, rows = summary_rows(results)
    table = Table(title=f"{model}, target {target_length}: passkey % ({trials} trial(s) per length), "
                        f"PPL of the last {results['tail']} tokens")
    for column in header:
        table.add_column(column, justify="right" if column != "method" else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"results: {results['path']}  ({results['seconds']:.0f} s, {results['environment']['device']})", highlight=False)


def main():  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
