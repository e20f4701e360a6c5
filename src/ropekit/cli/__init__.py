"""The ``ropekit`` command line: a thin layer over the Python API (every command calls one API function).

The commands that load, extend, train, check and evaluate live here; the studies' commands (``study``, ``lab``) and
LongRecipe's tools (``merge``, ``data select``) in :mod:`ropekit.cli.studies`; what they share in :mod:`ropekit.cli.common`.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..embedded import DEFAULT_MODEL
from ..errors import RopekitError
from .common import _json_out, _print_results, app, console, friendly, parse_params, say  # noqa: F401


@app.command()
@friendly
def methods(as_json: bool = typer.Option(False, "--json", help="print the registry as JSON")):
    """List every method, its side (frequency / attention), parameters and defaults."""
    from .. import list_methods

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
    from .. import describe, load_model

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
    from .. import extend as extend_model
    from .. import load_model, save_model

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
        from ..export.bundle import export_frequency_only

        dropped = export_frequency_only(model, frequency_only, overwrite=overwrite)
        for line in dropped:
            say("dropped:", f"{line} — {frequency_only} is NOT the same model at long context", "bold yellow", err=True)
        say("wrote", f"{frequency_only} (plain transformers, no custom code)")
        return
    from ..export.gguf import export_gguf
    from ..models import resolve_source

    kind, directory = resolve_source(model)  # the embedded default's alias becomes its cached directory
    if kind != "dir":
        raise RopekitError(f"{model} is not a checkpoint directory", "export from a directory written by ropekit or save_pretrained")
    summary = export_gguf(directory, gguf, dtype=dtype, overwrite=overwrite)
    say("wrote", f"{gguf}  arch={summary['arch']}  context={summary['context_length']}  "
                 f"rope={summary['rope']}  tensors={summary['tensors']}  ({summary['dtype']})")


@app.command("lm-eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
@friendly
def lm_eval(ctx: typer.Context):
    """lm-evaluation-harness with the `ropekit` model backend registered; every argument goes to lm-eval's CLI, e.g.
    ropekit lm-eval --model ropekit --model_args pretrained=CKPT,method=eabf,target_length=32k --tasks TASKS
    (needs: pip install 'ropekit[lm-eval]')."""
    from ..integrations.lm_eval import cli

    cli(list(ctx.args))

def _tasks(tasks: str, options: list[str] | None, trials: int | None = None, windows: int | None = None) -> dict:
    """Task options from --tasks and --task-option; --trials and --windows fill in every task that has such a count
    (an explicit --task-option wins)."""
    from ..eval.runner import parse_task_options
    from ..eval.tasks import get_task

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
    from ..studies.compare import compare as run_compare
    from ..lengths import parse_lengths

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
    from ..eval.runner import RunSpec
    from ..eval.runner import evaluate as run_evaluate
    from ..lengths import parse_lengths

    out = output or Path("ropekit-results") / datetime.now().strftime("eval-%Y%m%d-%H%M%S")
    spec = RunSpec(model, method, parse_params(param), target_length)
    results = run_evaluate([spec], _tasks(tasks, task_option, trials, windows), parse_lengths(lengths), out, seed=seed, device=device, dtype=dtype)
    _print_results(results)


@app.command()
@friendly
def report(directory: Path = typer.Argument(..., help="an --output directory of `ropekit eval`, `compare` or `study` (slices are merged)")):
    """Render results.json (or every DIR/<slice>/results.json, merged) into report.html (self-contained) and report.md
    with tables and PNG plots."""
    from ..studies.report import render

    md, page = render(directory)
    say("wrote", f"{page} and {md}")


@app.command()
@friendly
def train(model: str = typer.Argument(DEFAULT_MODEL, help="base model: directory, .gguf, hub id or smollm2-135m"),
          method: Optional[str] = typer.Option(None, "--method", "-m", help="RoPE method (default: the recipe's: eabf, or linear for cream-paper)"),
          target_length: str = typer.Option("32k", "--target-length", "-t", help="context window to reach"),
          output: Path = typer.Option(..., "--output", "-o", help="directory for checkpoints, logs and the final model"),
          recipe: str = typer.Option("eabf-keep", help="eabf-keep (EABF that keeps the model), eabf-paper, eabf-mix, cream-paper, "
                                     "longrecipe (3 stages), longlora or smoke (see docs/training.md)"),
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
          synthetic_tasks: Optional[str] = typer.Option(None, help="synthetic conversations: record kinds from fact, key, kv, line, quote "
                                                        "(quote: answers copy 30-60 words of the context), joined by commas (default: the recipe's)"),
          distill: Optional[float] = typer.Option(None, help="weight of a KL term towards the starting model on in-window tokens "
                                                  "(keeps language; loads a second copy; default: the recipe's)"),
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
    from ..training.api import TrainOptions, close_process_group
    from ..training.api import train as run_train

    summary = run_train(TrainOptions(
        model=model, method=method, target_length=target_length, output=output, recipe=recipe, data=data, data_kind=data_kind,
        chat_template=str(chat_template) if chat_template else None, skip_bad_rows=skip_bad_rows, strategy=strategy,
        strategy_params=parse_params(strategy_param), method_params=parse_params(param), train_length=train_length,
        samples=samples, text_share=text_share, synthetic_tasks=synthetic_tasks, distill=distill, min_tokens=min_tokens, pack=pack, learning_rate=lr, schedule=schedule, warmup_steps=warmup_steps,
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
    from ..eval.check import check_models, table_lines

    result = check_models(base, trained, lengths=[n for n in (lengths or "").split(",") if n.strip()], text=text, length=length,
                          windows=windows, trials=trials, device=device)
    if as_json:
        _json_out(result)
    else:
        for line in table_lines(result):
            console.print(line, highlight=False)
    _check_verdict(result, fail_on_regression, quiet=as_json)


from . import studies  # noqa: E402,F401  (registers study, lab, merge and data select on the app)


def main():  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
