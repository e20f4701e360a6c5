"""Multi-device configs (configs/accelerate/): each is read as accelerate launches it; what it cannot serve is refused
before training in one line; FSDP2 on 2 CPU processes equals 1 process (losses and checkpoint logits); context
parallelism's position logic on 2 processes equals the unsharded forward; DeepSpeed ZeRO-3 equals plain training."""

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import ropekit
from ropekit.errors import RopekitError
from ropekit.training.parallel import Launch, check_launch, fallback_note, read_launch
from ropekit.testing import random_ids, save_tiny_checkpoint, tiny_model, tiny_tokenizer
from ropekit.training.api import TrainOptions, train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
SCRIPTS = Path(__file__).resolve().parent / "multiprocess"


def launch_env(config: str, processes: int = 2) -> dict:
    """The environment `accelerate launch --config_file CONFIG` gives each process (accelerate's own launch code)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{config}.yaml"), "script.py"])
    args, _, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ""
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {**env, "WORLD_SIZE": str(processes)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def extended(method: str = "eabf", model_type: str = "llama", **kwargs):
    return ropekit.extend(tiny_model(model_type, **kwargs), method, target_length=512)


def test_each_shipped_config_is_read_as_accelerate_launches_it():
    expected = {"ddp": Launch(2), "fsdp2": Launch(2, "fsdp", fsdp_version=2),
                "fsdp2-context-parallel": Launch(2, "fsdp", fsdp_version=2, context_parallel=2),
                "deepspeed-zero3": Launch(2, "deepspeed", zero_stage=3)}
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(expected)  # a new config gets its line here
    for config, launch in expected.items():
        assert read_launch(launch_env(config)) == launch, config
    assert read_launch({}) == Launch()


REFUSED = [  # (config, method, model type, model kwargs, options, what the one line names)
    ("fsdp2-context-parallel", "self_extend", "llama", {}, {}, "Self-Extend cannot run under context parallelism"),
    ("fsdp2-context-parallel", "eabf", "gemma2", {}, {}, "gemma2's sliding-window layers"),
    ("fsdp2-context-parallel", "eabf", "mistral", {"sliding_window": 32}, {}, "mistral's sliding-window layers"),
    ("fsdp2-context-parallel", "dynamic", "llama", {}, {}, "dynamic RoPE cannot run under context parallelism"),
    ("fsdp2-context-parallel", "eabf", "llama", {"attn_implementation": "eager"}, {}, "SDPA only, not eager"),
    ("fsdp2-context-parallel", "eabf", "llama", {}, {"attn_implementation": "flash_attention_2"}, "SDPA only, not flash_attention_2"),
    ("fsdp2-context-parallel", "linear", "llama", {}, {"attention": "s2", "lora_r": 0}, "S²-Attn cannot run under context parallelism"),
    ("fsdp2", "eabf", "llama", {}, {"lora_r": 8}, "LoRA cannot be merged under 2 processes, FSDP2"),
    ("deepspeed-zero3", "yarn", "llama", {}, {"lora_r": 8}, "LoRA cannot be merged under 2 processes, DeepSpeed ZeRO-3"),
]


@pytest.mark.parametrize("config,method,model_type,model_kwargs,options,named", REFUSED)
def test_a_config_refuses_what_it_cannot_serve_in_one_line(config, method, model_type, model_kwargs, options, named):
    with pytest.raises(RopekitError, match=named) as err:
        check_launch(read_launch(launch_env(config)), extended(method, model_type, **model_kwargs),
                     TrainOptions(**options), on_gpu=True)
    assert "\n" not in str(err.value) and "Fix:" in str(err.value)


def test_context_parallelism_is_refused_on_cpus():
    with pytest.raises(RopekitError, match="context parallelism needs CUDA GPUs"):
        check_launch(read_launch(launch_env("fsdp2-context-parallel")), extended(), TrainOptions(), on_gpu=False)


def test_what_each_config_serves_and_what_ropekit_adjusts():
    model, options = extended("eabf"), TrainOptions(lora_r=0)
    for config in ("ddp", "fsdp2"):
        assert check_launch(read_launch(launch_env(config)), model, options, on_gpu=True) == (options, [])
    assert check_launch(read_launch(launch_env("ddp")), extended("eabf"), replace(options, lora_r=8), on_gpu=False)[1] == []
    zero3, notes = check_launch(read_launch(launch_env("deepspeed-zero3")), model, options, on_gpu=True)
    assert zero3 == replace(options, chunked_loss=False) and len(notes) == 1 and "ZeRO-3: loss from full logits" in notes[0]
    cp, notes = check_launch(read_launch(launch_env("fsdp2-context-parallel")), model, options, on_gpu=True)
    assert cp == replace(options, pack=False, chunked_loss=False) and len(notes) == 1
    assert "packing off" in notes[0] and "multiple of 4 tokens" in notes[0]
    # CREAM, PoSE and every static frequency method serve under context parallelism
    for method in ("linear", "yarn", "ntk", "abf", "llama3", "yarn+logscale"):
        check_launch(read_launch(launch_env("fsdp2-context-parallel")), extended(method), options, on_gpu=True)


def test_a_fallback_from_the_requested_sharding_is_said():
    asked = read_launch(launch_env("fsdp2"))
    line = fallback_note(asked, {"distributed_type": "MULTI_CPU"})
    assert "asked for 2 processes, FSDP2" in line and "accelerate enables FSDP on GPUs only" in line
    assert fallback_note(asked, {"distributed_type": "FSDP"}) is None
    assert fallback_note(read_launch(launch_env("ddp")), {"distributed_type": "MULTI_CPU"}) is None


def test_train_refuses_before_preparing_data(tmp_path, monkeypatch):
    save_tiny_checkpoint(tmp_path / "model", vocab_size=len(tiny_tokenizer()))
    for key, value in launch_env("fsdp2-context-parallel", processes=1).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PARALLELISM_CONFIG_CP_SIZE", "2")
    with pytest.raises(RopekitError, match="Self-Extend cannot run under context parallelism"):
        train(TrainOptions(model=str(tmp_path / "model"), method="self_extend", target_length=512, output=str(tmp_path / "out"),
                           recipe="smoke", device="cpu", progress=False))
    assert not (tmp_path / "out").exists()  # nothing generated, nothing written


# ---------------------------------------------------------------------------------------------- multi-process runs


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    save_tiny_checkpoint(root / "model", vocab_size=len(tiny_tokenizer()))
    rows = [{"messages": [{"role": "user", "content": f"Remember the number {1000 + 37 * i}. " + "Filler text. " * 12 + "Which number?"},
                          {"role": "assistant", "content": f"The number is {1000 + 37 * i}."}]} for i in range(16)]
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "doc.txt").write_text(" ".join(f"token{i % 50} and word{i % 7}." for i in range(600)))
    return root


CASES = {  # the same global batch of 2: one process with micro batch 2, or 2 processes with micro batch 1
    "eabf": dict(method="eabf", recipe="smoke", data="chat.jsonl", learning_rate=3e-3),
    "cream": dict(recipe="cream-paper", data="doc.txt", warmup_steps=0, learning_rate=1e-3),  # PI + CREAM positions
}


def case_options(workspace, out, case, **kw) -> dict:
    base = dict(model=str(workspace / "model"), target_length=512, output=str(out), batch_size=2, max_steps=4, save_steps=100,
                device="cpu", progress=False, check=False)
    options = {**base, **CASES[case], **kw}
    options["data"] = str(workspace / options["data"])
    return options


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in open(Path(out) / "training_log.jsonl")]


def same_logits(a, b) -> float:
    """Max relative difference of the logits of two checkpoints over 300 tokens (beyond the 64-token native window)."""
    first, _ = ropekit.load_model(a, device="cpu")
    second, _ = ropekit.load_model(b, device="cpu")
    record = {k: v for k, v in first.config.ropekit.items() if k != "check"}  # a run's before/after check is its own
    assert record == {k: v for k, v in second.config.ropekit.items() if k != "check"}  # the extension record survives
    ids = random_ids(300, seed=5)
    with torch.no_grad():
        x, y = first(ids).logits, second(ids).logits
    return float((x - y).abs().max() / y.abs().max())


def accelerate_launch(config: str, processes: int, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
               "--num_processes", str(processes), "--mixed_precision", "no", "--main_process_port", str(free_port()), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_fsdp2_on_two_processes_matches_one(workspace, tmp_path, case):
    """configs/accelerate/fsdp2.yaml (CPU/gloo overrides only), 2 processes: accelerate's FSDP2 path shards the model,
    the per-step losses equal one process with the same global batch, and the gathered checkpoint gives the same
    logits. tests/multiprocess/fsdp2_on_cpu.py lifts the one gate that keeps accelerate from FSDP on CPUs."""
    one = train(TrainOptions(**case_options(workspace, tmp_path / "one", case, micro_batch_size=2)))
    options = case_options(workspace, tmp_path / "fsdp", case, micro_batch_size=1)
    run = accelerate_launch("fsdp2", 2, str(SCRIPTS / "fsdp2_on_cpu.py"), json.dumps(options), str(tmp_path / "shards"))
    assert run.returncode == 0, run.stderr[-3000:]
    shards = [json.loads((tmp_path / "shards" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["fsdp_module"] and s["placements"] == "(Shard(dim=0),)" for s in shards)
    assert sum(s["local_embedding_rows"] for s in shards) == shards[0]["embedding_rows"]  # each process holds half
    summary = json.loads((tmp_path / "fsdp" / "training_summary.json").read_text())
    assert summary["parallel"]["distributed_type"] == "FSDP" and summary["parallel"]["fsdp_version"] == 2
    assert summary["world_size"] == 2 and one["parallel"]["distributed_type"] == "NO"
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    assert same_logits(tmp_path / "fsdp", tmp_path / "one") < 1e-4


@pytest.mark.slow
def test_context_parallel_positions_match_the_unsharded_forward(tmp_path):
    """2 processes over gloo: ropekit's CP collator → the Trainer's CP inputs → accelerate/torch's load-balanced
    split → ropekit's attention wrapper on each shard's queries against all keys (tests/multiprocess/
    context_parallel_on_cpu.py). CREAM, PoSE, LongRecipe and padded contiguous rows, EABF's logit scale on layers 2-3."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(SCRIPTS / "context_parallel_on_cpu.py"), str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for case in ("cream", "pose", "longrecipe", "contiguous_padded"):
        for result in (r[case] for r in ranks):
            assert result["positions_global"], case  # each shard carries the full sequence's ids
            assert result["shard_len"] * 2 == result["seq_len"] and result["layers_seen"] == 4
            assert result["query_err"] < 1e-5 and result["logit_err"] < 1e-5, (case, result)
            assert result["loss"] == pytest.approx(result["reference_loss"], rel=1e-5)
    assert max(r["cream"]["max_position"] for r in ranks) == 511  # CREAM's tail ids reach the target
    assert max(r["longrecipe"]["max_position"] for r in ranks) == 511  # LongRecipe's last id is target - 1
    assert ranks[0]["contiguous_padded"]["seq_len"] == 92  # 90 tokens padded to a multiple of 2 × cp
    assert ranks[0]["local_positions_logit_err"] > 1e-2  # shard-local ids would be caught


@pytest.mark.slow
def test_context_parallel_config_is_refused_on_cpus_before_training(workspace, tmp_path):
    run = accelerate_launch("fsdp2-context-parallel", 2, "--parallelism_config_dp_shard_size", "1", "-m", "ropekit", "train",
                            str(workspace / "model"), "--target-length", "512", "--recipe", "smoke", "--device", "cpu",
                            "--output", str(tmp_path / "out"), timeout=300)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if "context parallelism needs CUDA GPUs" in line]
    assert len(lines) == 2 and "[rank" not in run.stderr  # one line per process, no traceback from a process
    assert not (tmp_path / "out" / "training_log.jsonl").exists()


@pytest.mark.slow
def test_deepspeed_zero3_matches_plain_training(workspace, tmp_path):
    """configs/accelerate/deepspeed-zero3.yaml, 2 processes on DeepSpeed's CPU accelerator (gloo): 3 steps equal one
    plain process with the same global batch; the gathered 16-bit-save checkpoint gives the same logits. The first
    run compiles DeepSpeed's small shared-memory communication op (about a minute of CPU, cached afterwards)."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install --no-build-isolation deepspeed)")
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("DeepSpeed's CPU accelerator compiles a C++ op on first use and no C++ compiler is installed")
    plain = train(TrainOptions(**case_options(workspace, tmp_path / "plain", "eabf", micro_batch_size=2, max_steps=3)))
    run = accelerate_launch("deepspeed-zero3", 2, "-m", "ropekit", "train", str(workspace / "model"), "--method", "eabf",
                            "--target-length", "512", "--recipe", "smoke", "--data", str(workspace / "chat.jsonl"), "--batch-size", "2",
                            "--micro-batch-size", "1", "--max-steps", "3", "--lr", "3e-3", "--device", "cpu",
                            "--output", str(tmp_path / "zero3"), env={"DS_ACCELERATOR": "cpu"}, timeout=420)
    assert run.returncode == 0, run.stderr[-3000:]
    # the before/after check ran on rank 0 after ZeRO-3 training (it once waited forever on ZeRO-3's partitioned loading)
    assert run.stderr.count("ropekit: before/after check on") == 1  # by rank 0 alone
    assert run.stderr.count("ropekit: DeepSpeed ZeRO-3: loss from full logits") == 1  # said once, by the main process
    summary = json.loads((tmp_path / "zero3" / "training_summary.json").read_text())
    assert summary["parallel"]["distributed_type"] == "DEEPSPEED" and summary["parallel"]["zero_stage"] == 3
    assert summary["world_size"] == 2
    assert summary["check"]["verdict"] in ("kept", "regressed") and summary["check"]["rows"]
    assert summary["memory"]["chunked_loss"] is False and plain["memory"]["chunked_loss"] is True
    assert losses(tmp_path / "zero3") == pytest.approx(losses(tmp_path / "plain"), rel=1e-4)
    assert same_logits(tmp_path / "zero3", tmp_path / "plain") < 1e-4
