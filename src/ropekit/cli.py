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
from rich.text import Text
from rich.table import Table

from .embedded import DEFAULT_MODEL
from .errors import RopekitError

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
    extend_model(loaded, method, target_length=target_length, allow_untested=allow_untested, tokenizer=tokenizer, **params)
    save_model(loaded, tokenizer, out, overwrite=overwrite)
    record = loaded.config.ropekit
    say("saved", f"{out}  method={record['method']}  native={record['native_length']}  "
                 f"target={record['target_length']}  rope={json.dumps(loaded.config.rope_parameters)}")


@app.command("export")
@friendly
def export(model: str = typer.Argument(..., help="checkpoint directory (e.g. from `ropekit extend`), or smollm2-135m"),
           frequency_only: Optional[Path] = typer.Option(None, "--frequency-only", help="write the plain-transformers variant (attention side dropped) to this new directory"),
           gguf: Optional[Path] = typer.Option(None, "--gguf", help="write a GGUF file for llama.cpp / Ollama (frequency-only methods, llama-family models)"),
           dtype: str = typer.Option("f16", help="GGUF tensor type: f16 or f32"),
           overwrite: bool = typer.Option(False, help="replace an existing output")):
    """Take an extended model elsewhere: a plain variant any server loads, or a GGUF for llama.cpp (docs/serving.md)."""
    if (frequency_only is None) == (gguf is None):
        raise RopekitError("pass exactly one of --frequency-only OUT_DIR or --gguf OUT.gguf", "e.g. ropekit export ckpt --gguf model.gguf")
    if frequency_only is not None:
        from .export.bundle import export_frequency_only

        dropped = export_frequency_only(model, frequency_only, overwrite=overwrite)
        for line in dropped:
            say("dropped:", f"{line} — {frequency_only} is NOT the same model at long context", "bold yellow", err=True)
        say("wrote", f"{frequency_only} (plain transformers, no custom code)")
        return
    from .export.gguf import export_gguf

    summary = export_gguf(model, gguf, dtype=dtype, overwrite=overwrite)
    say("wrote", f"{gguf}  arch={summary['arch']}  context={summary['context_length']}  "
                 f"rope={summary['rope']}  tensors={summary['tensors']}  ({summary['dtype']})")


@app.command("lm-eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
@friendly
def lm_eval(ctx: typer.Context):
    """lm-evaluation-harness with the `ropekit` model backend registered; every argument goes to lm-eval's CLI, e.g.
    ropekit lm-eval --model ropekit --model_args pretrained=CKPT,method=eabf,target_length=32k --tasks TASKS
    (needs: pip install 'ropekit[lm-eval]')."""
    from .integrations.lm_eval import cli

    cli(list(ctx.args))


def _print_results(results: dict) -> None:
    from .studies.compare import conclusions, summary_rows, timing_lines

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


def _tasks(tasks: str, options: list[str] | None, trials: int | None = None, windows: int | None = None) -> dict:
    """Task options from --tasks and --task-option; --trials and --windows fill in every task that has such a count
    (an explicit --task-option wins)."""
    from .eval.runner import parse_task_options
    from .eval.tasks import get_task

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise RopekitError("no task given", "pass e.g. --tasks passkey,ppl")
    chosen = parse_task_options(options, names)
    for name, task_options in chosen.items():
        defaults = get_task(name).options
        for count, keys in ((trials, TRIAL_OPTIONS), (windows, WINDOW_OPTIONS)):
            for key in keys:
                if count is not None and key in defaults:
                    task_options.setdefault(key, count)
    return chosen


TASKS_HELP = "comma-separated: passkey_ppl, ppl, passkey, niah, lines, kv, ruler, longbench, entropy"
TRIAL_OPTIONS = ("trials", "samples")  # --trials: samples per length (passkey_ppl, passkey, niah, lines, kv; ruler's samples)
WINDOW_OPTIONS = ("windows", "documents")  # --windows: text windows per length (ppl; entropy's documents)
TRIALS_HELP = "samples per length for every task that draws them (passkey_ppl, passkey, niah, lines, kv, ruler)"
WINDOWS_HELP = "natural-text windows per length (ppl, entropy); passkey_ppl's trials are its windows"


@app.command()
@friendly
def compare(model: str = typer.Option(DEFAULT_MODEL, "--model", help="base model: directory, .gguf, hub id or smollm2-135m"),
            methods: str = typer.Option("none,yarn,eabf", help="comma-separated methods applied to --model (a+b combines)"),
            checkpoints: Optional[str] = typer.Option(None, help="comma-separated checkpoint directories evaluated as they are"),
            target_length: str = typer.Option("32k", "--target-length", "-t", help="target window for every method"),
            lengths: str = typer.Option("4k,12k", help="evaluation lengths; the CPU default stays ≤ 12K tokens"),
            tasks: str = typer.Option("passkey_ppl", help=TASKS_HELP + "; passkey_ppl scores a pass key and perplexity from one forward"),
            task_option: Optional[List[str]] = typer.Option(None, "--task-option", help="task.option=JSON, e.g. passkey.trials=20 (repeatable)"),
            trials: int = typer.Option(1, min=1, help=TRIALS_HELP),
            windows: int = typer.Option(1, min=1, help=WINDOWS_HELP),
            param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="method parameter, e.g. yarn.factor=8 (repeatable)"),
            seed: int = typer.Option(0, help="seed for every generated sample"),
            output: Optional[Path] = typer.Option(None, "--output", "-o", help="results directory (default ./ropekit-results/compare-<time>); re-running resumes"),
            device: str = typer.Option("auto", help="auto, cpu, cuda"),
            dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")):
    """Compare the original model with extensions (and checkpoints) side by side.

    With no arguments: SmolLM2-135M (8K native), the original next to YaRN and Entropy-Aware ABF at target 32K, at
    4K and 12K tokens, one forward each: a pass key planted in natural text and the perplexity of the text after it.
    Untrained EABF is not expected to retrieve (it is a fine-tuning method). On a GPU use e.g.
    --methods none,ntk,dynamic,yarn,eabf --lengths 4k,8k,16k,32k --tasks passkey,niah,ppl --trials 20 --windows 3.
    """
    from .studies.compare import compare as run_compare
    from .lengths import parse_lengths

    task_options = _tasks(tasks, task_option, trials, windows)
    out = output or Path("ropekit-results") / datetime.now().strftime("compare-%Y%m%d-%H%M%S")
    results = run_compare(model=model, methods=[m for m in methods.split(",") if m.strip()], target_length=target_length,
                          lengths=parse_lengths(lengths), tasks=task_options, seed=seed, params=parse_params(param),
                          checkpoints=[c for c in (checkpoints or "").split(",") if c.strip()], output=out, device=device, dtype=dtype)
    _print_results(results)


@app.command("eval")
@friendly
def evaluate(model: str = typer.Argument(..., help="checkpoint directory (e.g. from `ropekit train`), .gguf, hub id or smollm2-135m"),
             tasks: str = typer.Option("passkey,niah,ppl", help=TASKS_HELP),
             lengths: str = typer.Option("4k,8k", help="evaluation lengths, e.g. 4k,8k,16k,32k"),
             task_option: Optional[List[str]] = typer.Option(None, "--task-option", help="task.option=JSON, e.g. niah.trials=2 (repeatable)"),
             trials: Optional[int] = typer.Option(None, min=1, help=TRIALS_HELP + " (default: each task's own)"),
             windows: Optional[int] = typer.Option(None, min=1, help=WINDOWS_HELP + " (default: each task's own)"),
             method: Optional[str] = typer.Option(None, "--method", "-m", help="apply a method first (training-free evaluation)"),
             target_length: Optional[str] = typer.Option(None, "--target-length", "-t", help="target window for --method"),
             param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="method parameter key=value (repeatable)"),
             seed: int = typer.Option(0),
             output: Optional[Path] = typer.Option(None, "--output", "-o", help="results directory (default ./ropekit-results/eval-<time>); re-running resumes"),
             device: str = typer.Option("auto"),
             dtype: str = typer.Option("auto")):
    """Evaluate one model on long-context tasks at several lengths; writes results.json (render with `ropekit report`)."""
    from .eval.runner import RunSpec
    from .eval.runner import evaluate as run_evaluate
    from .lengths import parse_lengths

    out = output or Path("ropekit-results") / datetime.now().strftime("eval-%Y%m%d-%H%M%S")
    spec = RunSpec(model, method, parse_params(param), target_length)
    results = run_evaluate([spec], _tasks(tasks, task_option, trials, windows), parse_lengths(lengths), out, seed=seed, device=device, dtype=dtype)
    _print_results(results)


@app.command()
@friendly
def report(directory: Path = typer.Argument(..., help="an --output directory of `ropekit eval`, `compare` or `study` (slices are merged)")):
    """Render results.json (or every DIR/<slice>/results.json, merged) into report.html (self-contained) and report.md
    with tables and PNG plots."""
    from .studies.report import render

    md, page = render(directory)
    say("wrote", f"{page} and {md}")


@app.command()
@friendly
def train(model: str = typer.Argument(DEFAULT_MODEL, help="base model: directory, .gguf, hub id or smollm2-135m"),
          method: Optional[str] = typer.Option(None, "--method", "-m", help="RoPE method (default: the recipe's: eabf, or linear for cream-paper)"),
          target_length: str = typer.Option("32k", "--target-length", "-t", help="context window to reach"),
          output: Path = typer.Option(..., "--output", "-o", help="directory for checkpoints, logs and the final model"),
          recipe: str = typer.Option("eabf-paper", help="eabf-paper, cream-paper, longrecipe (3 stages), longlora or smoke (see docs/training.md)"),
          data: Optional[str] = typer.Option(None, help="JSONL/JSON/parquet/.txt/directory/saved dataset; default: the recipe's offline data"),
          data_kind: str = typer.Option("auto", help="auto, chat (loss on responses) or text (loss on all tokens)"),
          chat_template: Optional[Path] = typer.Option(None, help="a .jinja chat template to use instead of the tokenizer's"),
          skip_bad_rows: bool = typer.Option(False, help="skip malformed rows (counted in the summary) instead of stopping"),
          strategy: Optional[str] = typer.Option(None, help="position strategy: contiguous, cream, pose, randpos, longrecipe"),
          strategy_param: Optional[List[str]] = typer.Option(None, "--strategy-param", help="e.g. sigma=auto, mode=relativity (repeatable)"),
          param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="RoPE method parameter key=value (repeatable)"),
          train_length: Optional[str] = typer.Option(None, help="tokens per training sample (default: target, or native for cream-paper)"),
          samples: Optional[int] = typer.Option(None, help="synthetic conversations to generate, or a cap on examples"),
          text_share: Optional[float] = typer.Option(None, help="mix recipes: the share of samples that are plain text (default: the recipe's)"),
          min_tokens: Optional[int] = typer.Option(None, help="drop conversations shorter than this (EABF preparation)"),
          pack: bool = typer.Option(True, help="pack short examples into full rows with per-document position resets"),
          lr: Optional[float] = typer.Option(None, "--lr", help="peak learning rate"),
          schedule: Optional[str] = typer.Option(None, help="cosine, linear, constant, ..."),
          warmup_steps: Optional[int] = typer.Option(None),
          epochs: Optional[float] = typer.Option(None),
          max_steps: Optional[int] = typer.Option(None, help="stop after this many optimizer steps (overrides epochs)"),
          batch_size: Optional[int] = typer.Option(None, help="global batch in sequences (accumulated)"),
          micro_batch_size: int = typer.Option(1, help="sequences per device per forward"),
          weight_decay: Optional[float] = typer.Option(None),
          lora_r: Optional[int] = typer.Option(None, help="LoRA rank; 0 = full fine-tuning (default: the recipe's; 8 for longlora, else 0)"),
          lora_alpha: Optional[int] = typer.Option(None, help="LoRA alpha (default: the recipe's, else 2r)"),
          lora_targets: Optional[str] = typer.Option(None, help="all-linear or module names, e.g. q_proj,k_proj,v_proj,o_proj (default: the recipe's)"),
          train_embeddings_and_norms: bool = typer.Option(False, help="LongLoRA+: also train embeddings and norm layers (on with --attention s2 and LoRA)"),
          attention: Optional[str] = typer.Option(None, help="full, or s2: LongLoRA's shifted sparse attention while training (default: the recipe's)"),
          group_ratio: float = typer.Option(0.25, help="S²-Attn group size as a fraction of each sequence"),
          s2_min_length: Optional[str] = typer.Option(None, help="S²-Attn: sequences of at most N tokens use full attention (default: the native window; 0 = always S²)"),
          s2_kernel: str = typer.Option("auto", help="S²-Attn kernel: auto (flash-attn varlen on a GPU when installed, else SDPA), sdpa, flash"),
          gradient_checkpointing: bool = typer.Option(True),
          chunked_loss: bool = typer.Option(True, help="loss from hidden states in chunks (full logits never materialise; exact)"),
          tile_mlp: int = typer.Option(0, help="run decoder MLPs over tiles of N tokens (ALST-style; exact); 0 = off"),
          offload_activations: bool = typer.Option(False, help="keep saved activations in pinned CPU memory"),
          liger: str = typer.Option("auto", help="liger-kernel fused kernels: auto (if installed, on GPU), on, off"),
          precision: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp32"),
          attn_implementation: Optional[str] = typer.Option(None, help="sdpa, eager, flash_attention_2, flex_attention"),
          seed: int = typer.Option(0),
          save_steps: int = typer.Option(50, help="checkpoint every N optimizer steps"),
          resume: bool = typer.Option(False, help="continue from the last checkpoint in --output"),
          overwrite: bool = typer.Option(False, help="write into a non-empty --output"),
          device: str = typer.Option("auto"),
          replay_data: Optional[str] = typer.Option(None, help="longrecipe stage 1 data (default: synthetic conversations)"),
          replay_length: Optional[str] = typer.Option(None, help="longrecipe stage 1 tokens per sample (default: native length)"),
          replay_steps: Optional[int] = typer.Option(None, help="longrecipe stage 1 steps (default: the paper's 68/240 of stage 0's tokens)"),
          merge_weight: float = typer.Option(0.5, help="longrecipe merge: w·replayed + (1 − w)·original"),
          check: bool = typer.Option(True, help="after training, compare the trained model with the one it started from "
                                     "(held-out text perplexity and pass key inside the native window)"),
          check_text: str = typer.Option("paradise_lost", help="held-out text for the check: paradise_lost, or a file the training never saw"),
          check_lengths: Optional[str] = typer.Option(None, help="further lengths for the check, e.g. 32k (comma-separated)"),
          fail_on_regression: bool = typer.Option(False, help="exit with status 1 when the check finds a regression")):
    """Extend a model and fine-tune it (full or LoRA), with CREAM/PoSE/RandPos/LongRecipe position strategies, on one
    CPU, one GPU, or many with `accelerate launch`. The output directory is a checkpoint `ropekit.load_model` restores.
    `--recipe longrecipe` runs three stages into OUT/stage0, OUT/stage1 and the merged model in OUT."""
    from .training.api import TrainOptions, close_process_group
    from .training.api import train as run_train

    summary = run_train(TrainOptions(
        model=model, method=method, target_length=target_length, output=output, recipe=recipe, data=data, data_kind=data_kind,
        chat_template=str(chat_template) if chat_template else None, skip_bad_rows=skip_bad_rows, strategy=strategy,
        strategy_params=parse_params(strategy_param), method_params=parse_params(param), train_length=train_length,
        samples=samples, text_share=text_share, min_tokens=min_tokens, pack=pack, learning_rate=lr, schedule=schedule, warmup_steps=warmup_steps,
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, micro_batch_size=micro_batch_size, weight_decay=weight_decay,
        lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=lora_targets, train_embeddings_and_norms=train_embeddings_and_norms,
        attention=attention, group_ratio=group_ratio, s2_min_length=s2_min_length, s2_kernel=s2_kernel,
        gradient_checkpointing=gradient_checkpointing, chunked_loss=chunked_loss, tile_mlp=tile_mlp,
        offload_activations=offload_activations, liger=liger, precision=precision, attn_implementation=attn_implementation,
        seed=seed, save_steps=save_steps, resume=resume, overwrite=overwrite, device=device, replay_data=replay_data,
        replay_length=replay_length, replay_steps=replay_steps, merge_weight=merge_weight, check=check, check_text=check_text,
        check_lengths=tuple(n for n in (check_lengths or "").split(",") if n.strip())))
    close_process_group()
    if not summary["main_process"]:
        return
    data_line = summary["data"]
    say("trained", f"{summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
                   f"{summary['tokens_seen']:,} tokens in {summary['seconds']:.0f} s → {output}")
    console.print(f"data: {data_line['source']}: {data_line['examples']} examples" +
                  (f", skipped {data_line['skipped']} malformed rows (first: {data_line['first_error']})" if data_line["skipped"] else ""),
                  highlight=False)
    if "stages" in summary:
        console.print(f"longrecipe: stage0 (extension) and stage1 ({summary['replay_steps']} replay steps, final loss "
                      f"{summary['replay_final_loss']:.4f}) in {output}/stage0, /stage1; merged with weight {summary['merge_weight']} "
                      f"into {output}", highlight=False)
    _check_verdict(summary.get("check"), fail_on_regression)


def _check_verdict(result: dict | None, fail_on_regression: bool, quiet: bool = False) -> None:
    if result is None:
        return
    if result["verdict"] == "kept":
        if quiet:
            return
        say("kept", "the trained model is within the check's bounds inside its native window")
        return
    say("REGRESSED:", "; ".join(result["regressions"]), "bold red", err=True)
    if fail_on_regression:
        raise typer.Exit(1)


@app.command("check")
@friendly
def check_command(base: str = typer.Argument(..., help="the model before: directory, .gguf, hub id or smollm2-135m"),
                  trained: str = typer.Argument(..., help="the model after (a checkpoint directory)"),
                  lengths: Optional[str] = typer.Option(None, help="further lengths to compare, e.g. 16k,32k"),
                  text: str = typer.Option("paradise_lost", help="held-out text: paradise_lost, or a file"),
                  length: str = typer.Option("1k", help="the in-window length (capped at the native window)"),
                  windows: int = typer.Option(4, min=1, help="text windows per length"),
                  trials: int = typer.Option(10, min=1, help="pass keys per length"),
                  device: str = typer.Option("auto", help="auto, cpu, cuda"),
                  as_json: bool = typer.Option(False, "--json", help="print the check as JSON"),
                  fail_on_regression: bool = typer.Option(False, help="exit with status 1 when the trained model regressed")):
    """Did fine-tuning keep the model? Perplexity of held-out text and pass keys, inside the native window (and at
    --lengths), for both models on the same seeded items; a regression is perplexity up > 10% or pass keys down by
    more than their binomial noise."""
    from .eval.check import check_models, table_lines

    result = check_models(base, trained, lengths=[n for n in (lengths or "").split(",") if n.strip()], text=text, length=length,
                          windows=windows, trials=trials, device=device)
    if as_json:
        _json_out(result)
    else:
        for line in table_lines(result):
            console.print(line, highlight=False)
    _check_verdict(result, fail_on_regression, quiet=as_json)


@app.command()
@friendly
def merge(a: str = typer.Argument(..., help="checkpoint A (its config and tokenizer are kept): directory or smollm2-135m"),
          b: str = typer.Argument(..., help="checkpoint B: directory or smollm2-135m"),
          weight: float = typer.Option(0.5, "--weight", "-w", help="w in w·A + (1 − w)·B"),
          output: Path = typer.Option(..., "--output", "-o", help="new directory for the merged checkpoint"),
          overwrite: bool = typer.Option(False, help="write into a non-empty output directory")):
    """Average two checkpoints of one architecture tensor by tensor, streamed shard by shard (LongRecipe's merge)."""
    from .training.merge import merge as run_merge

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
    from .training.selection import select_command

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
    from .studies.study import get_preset, preset_slices
    from .studies.study import study as run_study

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
        seeds: str = typer.Option("0", help="pre-training seeds, e.g. 0,1,2 (each is a full lab; tables show the spread)"),
        rows: Optional[str] = typer.Option(None, help="comma-separated row labels (default: the budget's rows)"),
        device: str = typer.Option("auto"),
        list_rows: bool = typer.Option(False, "--list", help="print the rows and exit")):
    """Train a small RoPE model from scratch (cached), extend it 4× with every method under one budget, and check
    each method's claim with pass key, key-value retrieval and perplexity at 1×-16× its window (docs/lab.md).
    About 25 minutes on 2 idle CPU cores (measured, docs/lab.md); --quick about 3."""
    from .studies.lab import ARMS, get_rows
    from .studies.lab import lab as run_lab

    if list_rows:
        for row in get_rows():
            console.print(f"  {row.label:<12} {row.method:<12} {ARMS[row.arm]:<29} {row.strategy}", highlight=False)
        return
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise RopekitError(f"--seeds {seeds!r} is not a list of integers", "write e.g. --seeds 0,1,2") from None
    results = run_lab(output, quick=quick, seeds=seed_list, rows=[r.strip() for r in (rows or "").split(",") if r.strip()] or None,
                      device=device)
    _print_results(results)
    from collections import Counter

    verdicts = ", ".join(f"{count} {verdict}" for verdict, count in Counter(c["verdict"] for c in results["claims"]).items())
    console.print(f"claims: {verdicts}; tables and evidence: {Path(output) / 'lab.md'}", highlight=False)


def main():  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
