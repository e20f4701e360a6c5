"""Shared pieces of the benchmark scripts: model shapes, the timing protocol, the matmul peak, MFU, and the JSON
results file every script writes with ``--json FILE``.

Results file (one per script and GPU, e.g. ``benchmarks/results/train_throughput-h100.json``)::

    {"benchmark": "train_throughput", "device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "transformers": "5.17.0",
     "command": "python benchmarks/train_throughput.py --lengths 16k,32k", "smoke": false, "started": "...",
     "seconds": 312.4, "rows": [{...}, ...], "summary": {"ratio_16k": ..., ...}}

``summary`` always holds the keys of :data:`REQUIRED_SUMMARY` for the script (``None`` where that figure was not
measured), so a program can read the headline numbers. The file is rewritten after every row, so a run stopped by a
time limit keeps what it measured. ``--smoke`` runs the same code on tiny shapes in seconds on a CPU; its summary
keys are filled from stand-in lengths (``"stand_ins"`` says which) and the file says ``"smoke": true``.

Timing protocol (:func:`measure`, :func:`measure_interleaved`): warm-up calls, then ``repeats`` timed calls
(≥ 5 on a GPU), each bracketed by ``torch.cuda.synchronize()``; the median is the figure, and the spread
(max − min) / median is reported next to it. Variants compared in one process are interleaved in rounds (A B C,
then C B A, …) so slow drift (clocks, temperature, other load) hits all alike. A comparison of two variants is read
from the rounds as pairs (:func:`paired_ratio`): the ratio within each round, their median, min/max and a bootstrap
95% interval of that median, so "1% slower" can be told from noise.

A killed run keeps what it measured: :class:`Results` rewrites the file (a temporary file, then an atomic rename)
after every row and, through ``measure_interleaved(on_round=…)``, after every round of a row still running, so a
SIGKILL leaves a whole file holding every finished row (``tests/test_benchmarks.py`` kills a run to check).

MFU: model FLOPs per token (:func:`model_flops_per_token`) × tokens/s over a peak, given against both the bf16
matmul peak measured at the start of the same run (:func:`matmul_peak`) and the device's spec dense bf16 peak
(:func:`spec_peak`; None for a device not in :data:`PEAK_SPEC_BF16`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The summary keys each benchmark must write (issue: "GPU performance, measured on one H100 and committed").
REQUIRED_SUMMARY = {
    "logit_scale_overhead": ("max_step_ratio", "max_prefill_ratio", "max_decode_ratio"),
    "train_throughput": ("ratio_16k", "ratio_32k", "vs_best_16k", "vs_best_32k", "mfu_16k", "mfu_32k"),
    "max_length": ("full_1b_plain", "full_1b_ropekit", "lora_7b_plain", "lora_7b_ropekit"),
    "eval_throughput": ("ratio_32k",),
    "niah_grid": ("seconds",),
}

# name: (hidden, intermediate, layers, heads, kv_heads, vocab, native length, rope theta, tied embeddings)
SHAPES = {
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152, 8192, 100000.0, True),
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4, 32000, 2048, 10000.0, False),
    "llama2-7b": (4096, 11008, 32, 32, 32, 32000, 4096, 10000.0, False),
    "tiny": (64, 128, 2, 4, 2, 512, 64, 10000.0, False),  # the --smoke stand-in for every shape
}


def config_for(shape: str):
    """A Llama config of a named shape (random weights are built from it; no model file needed)."""
    from transformers import LlamaConfig

    hidden, inter, layers, heads, kv, vocab, native, theta, tied = SHAPES[shape]
    return LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=native, tie_word_embeddings=tied,
                       rope_parameters={"rope_type": "default", "rope_theta": theta})


def enable_checkpointing(model) -> None:
    """Non-reentrant gradient checkpointing (transformers ≥ 5.21 renamed the method to activation_checkpointing_enable)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    name = "activation_checkpointing_kwargs" if enable.__name__.startswith("activation") else "gradient_checkpointing_kwargs"
    enable(**{name: {"use_reentrant": False}})


def add_model_args(parser: argparse.ArgumentParser, method: str = "eabf") -> None:
    parser.add_argument("--model", default="smollm2-135m", help="a model ropekit.load_model accepts (ignored with --random-weights)")
    parser.add_argument("--random-weights", action="store_true",
                        help="SmolLM2-135M's shape with random weights (timing needs no model file, only the tokenizer)")
    parser.add_argument("--tokenizer", default=None, help="with --random-weights: a directory holding SmolLM2's tokenizer "
                        "(default: ropekit's cached SmolLM2)")
    parser.add_argument("--method", default=method, help="ropekit method applied before timing ('none' for the model as is)")
    parser.add_argument("--target-length", default="32k")
    parser.add_argument("--haystack", default="shakespeare", help="NIAH haystack: a named corpus or a text file")


def timing_model(args):
    """(model, tokenizer) for the evaluation benchmarks: the tiny test model (--smoke), SmolLM2's shape with random
    weights (--random-weights: bf16 on a GPU, fp32 on a CPU), or a real model; extended with --method."""
    import ropekit

    if args.smoke:
        from ropekit.testing import tiny_model, tiny_tokenizer

        model, tokenizer = tiny_model("llama"), tiny_tokenizer()
        args.target_length = "512"
    elif args.random_weights:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ropekit.models import default_model_dir

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or default_model_dir())
        torch.manual_seed(0)
        with torch.device("cuda" if on_gpu() else "cpu"):
            model = AutoModelForCausalLM.from_config(config_for("smollm2-135m"), dtype=torch.bfloat16 if on_gpu() else torch.float32,
                                                     attn_implementation="sdpa").eval()
    else:
        model, tokenizer = ropekit.load_model(args.model)
    if args.method != "none":
        ropekit.extend(model, args.method, target_length=args.target_length)
    return model, tokenizer


def smoke_haystack() -> str:
    """A small natural-text file for smoke runs (the NIAH haystack, the perplexity text) — no corpus download."""
    import tempfile

    path = Path(tempfile.gettempdir()) / "ropekit-benchmark-smoke-haystack.txt"
    if not path.is_file():
        lines = [f"Line {i}: the quiet river ran past the old mill, and the miller counted {i % 17} sacks of grain." for i in range(400)]
        path.write_text("\n".join(lines) + "\n")
    return str(path)


# ------------------------------------------------------------------------------------------------------- device


def on_gpu() -> bool:
    return torch.cuda.is_available()


def device_name() -> str:
    """torch's device name (``NVIDIA H100 80GB HBM3``), or ``CPU (N threads)``."""
    return torch.cuda.get_device_name(0) if on_gpu() else f"CPU ({torch.get_num_threads()} threads)"


def tag_of(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` → ``h100``, ``NVIDIA H200`` → ``h200``, ``NVIDIA A100-SXM4-80GB`` → ``a100``."""
    name = name.lower().replace("nvidia", "")
    match = re.search(r"(?<![a-z0-9])([a-z]{1,2}\d{2,4}[a-z]?)(?![0-9a-z])", name)
    return match.group(1) if match else re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def gpu_tag() -> str | None:
    """A short file-name tag of the GPU, None on a CPU."""
    return tag_of(torch.cuda.get_device_name(0)) if on_gpu() else None


# Dense (not 2:4 sparse) bf16 tensor-core peaks from the vendors' data sheets, keyed by spec_key(); H100/H200 SXM: 989.
PEAK_SPEC_BF16 = {"h100": 989e12, "h200": 989e12, "h100-pcie": 756e12, "h100-nvl": 835e12, "h200-nvl": 835e12, "a100": 312e12}


def spec_key(name: str) -> str:
    """The :data:`PEAK_SPEC_BF16` key of a device name: its tag, plus the form factor where that changes the peak
    (an H100 PCIe card runs at lower clocks and power than the SXM module the plain ``h100`` entry is)."""
    tag, lower = tag_of(name), name.lower()
    form = next((f for f in ("pcie", "nvl") if f in lower), None)
    return f"{tag}-{form}" if form and f"{tag}-{form}" in PEAK_SPEC_BF16 else tag


def spec_peak(name: str | None = None) -> float | None:
    """The device's spec dense bf16 FLOP/s, or None (a CPU, or a device not in the table)."""
    if name is None:
        if not on_gpu():
            return None
        name = torch.cuda.get_device_name(0)
    return PEAK_SPEC_BF16.get(spec_key(name))


def sync() -> None:
    if on_gpu():
        torch.cuda.synchronize()


def peak_memory_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if on_gpu() else None


def reset_peak_memory() -> None:
    if on_gpu():
        torch.cuda.reset_peak_memory_stats()


def free_memory() -> None:
    import gc

    gc.collect()
    if on_gpu():
        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


# ------------------------------------------------------------------------------------------------------- timing


def stats(times: list[float]) -> dict | None:
    """Median, min, max, spread = (max − min) / median and the times themselves (in call order); None for none."""
    if not times:
        return None
    median = statistics.median(times)
    return {"median_s": median, "min_s": min(times), "max_s": max(times),
            "spread": (max(times) - min(times)) / median if median > 0 else 0.0, "n": len(times), "times_s": times}


def _timed_call(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def measure(fn, repeats: int = 5, warmup: int = 1) -> dict:
    """Warm-up calls, then ``repeats`` timed calls; returns :func:`stats` of the timed ones."""
    for _ in range(warmup):
        fn()
    return stats([_timed_call(fn) for _ in range(repeats)])


def measure_interleaved(fns: dict, repeats: int = 5, warmup: int = 1, *, deadline: float | None = None, on_round=None) -> dict:
    """Time several variants in rounds (A B C, then C B A, …); returns ``{name: stats}``, each list of times in
    round order so that ``times_s[i]`` of two variants come from the same round.

    ``deadline`` (a ``time.time()`` value): a round is started only if it should end before it, judged by the
    longest round so far (the last warm-up round for the first); the result then holds fewer than ``repeats``
    times, or None for a variant when no round fitted. ``on_round(times)`` is called after each round with the
    times so far (``{name: [seconds, …]}``), so a caller can write them down before the next round."""
    names = list(fns)
    longest = 0.0
    for i in range(warmup):
        start = time.perf_counter()
        for name in names:
            fns[name]()
        sync()
        if i == warmup - 1:
            longest = time.perf_counter() - start
    times = {name: [] for name in names}
    for round_ in range(repeats):
        if deadline is not None and time.time() + longest > deadline:
            break
        start = time.perf_counter()
        for name in names if round_ % 2 == 0 else reversed(names):
            times[name].append(_timed_call(fns[name]))
        longest = max(longest, time.perf_counter() - start)
        if on_round is not None:
            on_round(times)
    return {name: stats(t) for name, t in times.items()}


def paired_ratio(numerator: list[float], denominator: list[float], resamples: int = 2000, seed: int = 0) -> dict | None:
    """Per-round ratios ``numerator[i] / denominator[i]`` of two interleaved variants: their median (the figure),
    min and max, and a percentile-bootstrap 95% interval of the median (``resamples`` draws of the rounds with
    replacement, a fixed seed so a file is reproducible from its times). Pairing by round cancels the drift that
    both variants of a round share, which an interval over two separate medians would count as noise."""
    ratios = [a / b for a, b in zip(numerator, denominator) if b > 0]
    if not ratios:
        return None
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    lo, hi = medians[int(0.025 * (resamples - 1))], medians[int(round(0.975 * (resamples - 1)))]
    return {"median": statistics.median(ratios), "lo": lo, "hi": hi, "min": min(ratios), "max": max(ratios), "n": len(ratios)}


def matmul_peak(size: int | None = None, repeats: int = 10) -> float:
    """Dense matmul FLOP/s measured now: bf16 8192³ on a GPU (the MFU denominator the anchors use), fp32 on a CPU."""
    device, dtype = ("cuda", torch.bfloat16) if on_gpu() else ("cpu", torch.float32)
    size = size or (8192 if on_gpu() else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    result = measure(lambda: a @ b, repeats=repeats, warmup=3)
    return 2 * size**3 / result["median_s"]


def model_flops_per_token(config, length: int) -> float:
    """Training FLOPs per token as the anchors count MFU: 6·N_non-embedding + 6·V·d + 3.5 × the causal attention
    forward (L·2·S²·d per sequence, i.e. 7·L·S·d per token); recomputation is not counted."""
    d, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads)
    head_dim = getattr(config, "head_dim", None) or d // heads
    per_layer = d * heads * head_dim * 2 + d * kv * head_dim * 2 + 3 * d * config.intermediate_size
    return 6.0 * layers * per_layer + 6.0 * config.vocab_size * d + 3.5 * layers * 2 * length * heads * head_dim


class Budget:
    """Seconds left of a wall-clock budget (a device call is limited to 10 minutes)."""

    def __init__(self, seconds: float | None):
        self.start, self.seconds = time.time(), seconds

    def elapsed(self) -> float:
        return time.time() - self.start

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.elapsed()


# ------------------------------------------------------------------------------------------------------- results


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="write the results file here (default on a GPU: benchmarks/results/<script>-<gpu>.json)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on a CPU in seconds: checks the script end to end, measures nothing")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="stop starting new measurements after this many seconds (rows not run are recorded as skipped)")


def setup(args) -> None:
    """Per-run settings: a smoke run uses one CPU thread (tiny shapes gain nothing from more, and lose much on a
    loaded machine)."""
    if args.smoke:
        torch.set_num_threads(1)


def json_path(args, benchmark: str) -> Path | None:
    if args.json:
        return Path(args.json)
    tag = gpu_tag()
    return RESULTS_DIR / f"{benchmark}-{tag}.json" if tag and not args.smoke else None


class Results:
    """The results file of one benchmark run: rows appended as they are measured, rewritten atomically each time."""

    def __init__(self, benchmark: str, path: Path | None, smoke: bool = False, stand_ins: dict | None = None, keep_rows: bool = False):
        import transformers

        self.path = Path(path) if path else None
        self.budget = Budget(None)
        previous = []
        if keep_rows and self.path and self.path.is_file():
            previous = json.loads(self.path.read_text()).get("rows", [])
        self.data = {
            "benchmark": benchmark, "device": device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
            "command": " ".join(["python", *[_relative(a) for a in sys.argv]]), "smoke": smoke,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": 0.0,
            "rows": previous, "summary": {key: None for key in REQUIRED_SUMMARY[benchmark]},
        }
        if stand_ins:
            self.data["stand_ins"] = stand_ins

    @property
    def rows(self) -> list[dict]:
        return self.data["rows"]

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        self.write()
        return row

    def replace(self, match: dict, row: dict) -> dict:
        """Add ``row``, dropping earlier rows whose fields equal ``match`` (a re-measured probe replaces the old one)."""
        self.data["rows"] = [r for r in self.rows if any(r.get(k) != v for k, v in match.items())]
        return self.add(row)

    def set(self, key: str, value) -> None:
        self.data[key] = value

    def summarize(self, summary: dict) -> None:
        self.data["summary"].update(summary)
        self.write()

    def write(self) -> None:
        self.data["seconds"] = round(self.budget.elapsed(), 1)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable) + "\n")
        os.replace(tmp, self.path)

    def done(self) -> None:
        self.write()
        problems = validate(self.data)
        if self.path is not None:
            print(f"results: {self.path}" + (f" (schema problems: {'; '.join(problems)})" if problems else ""), flush=True)


def _relative(arg: str) -> str:
    try:
        return str(Path(arg).resolve().relative_to(Path.cwd()))
    except ValueError:
        return arg


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def validate(data: dict) -> list[str]:
    """Problems with a results file (empty when it is well formed): top-level fields, rows, the required summary keys
    (numbers or null; in a smoke file every one must be a number)."""
    problems = []
    for key, kind in (("benchmark", str), ("device", str), ("torch", str), ("transformers", str), ("command", str),
                      ("rows", list), ("summary", dict)):
        if not isinstance(data.get(key), kind):
            problems.append(f"{key!r} missing or not {kind.__name__}")
    if problems:
        return problems
    if data["benchmark"] not in REQUIRED_SUMMARY:
        return [f"unknown benchmark {data['benchmark']!r}"]
    if not data["rows"]:
        problems.append("no rows")
    if not all(isinstance(r, dict) for r in data["rows"]):
        problems.append("a row is not an object")
    for key in REQUIRED_SUMMARY[data["benchmark"]]:
        value = data["summary"].get(key, "missing")
        if value == "missing":
            problems.append(f"summary.{key} missing")
        elif value is None and data.get("smoke"):
            problems.append(f"summary.{key} is null in a smoke run")
        elif value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            problems.append(f"summary.{key} = {value!r} is not a number")
    return problems
