"""What every ``ropekit`` command shares: the Typer app, the consoles, one-line messages and errors, result tables."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text
from rich.table import Table

from ..errors import RopekitError

app = typer.Typer(help="Extend the context window of RoPE-based Hugging Face LLMs, fine-tune them, and prove it works.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)  # help is shown as written: "[lm-eval]" and code samples are text, not markup
# markup=False: every line is printed as written ("ropekit[lm-eval]", paths, users' strings); colour comes from say()
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def say(label: str, text: str = "", style: str = "green", err: bool = False) -> None:
    """One line: ``label`` in ``style``, then ``text`` exactly as written (never read as markup)."""
    line = Text(label, style=style)
    if text:
        line.append(text if text.startswith(";") else " " + text)
    (err_console if err else console).print(line, highlight=False, soft_wrap=err)


def friendly(command):
    """Turn a RopekitError into one red line and exit status 2, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RopekitError as err:
            say("error:", str(err), "bold red", err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            say("interrupted", style="yellow", err=True)
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

def _print_results(results: dict) -> None:
    from ..studies.compare import conclusions, summary_rows, timing_lines

    header, rows = summary_rows(results)
    table = Table(title=f"{results['kind']}: score per task and length (passkey/niah/lines/kv/ruler/longbench: %, ppl: perplexity)")
    for column in header:
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in conclusions(results) + timing_lines(results):
        console.print(line, highlight=False)
    console.print(f"results: {results['path']}; render with `ropekit report {Path(results['path']).parent}`", highlight=False)

