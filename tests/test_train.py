"""Fine-tuning end to end on tiny models: loss goes down, LoRA, resume after SIGKILL, 2 processes = 1 process."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import ropekit
from ropekit.testing import save_tiny_checkpoint, tiny_tokenizer
from ropekit.training.api import TrainOptions, train


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    save_tiny_checkpoint(root / "model", vocab_size=len(tiny_tokenizer()))
    rows = []
    for i in range(16):
        rows.append({"messages": [{"role": "user", "content": f"Remember the number {1000 + 37 * i}. " + "Filler text. " * 12 + "Which number?"},
                                  {"role": "assistant", "content": f"The number is {1000 + 37 * i}."}]})
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "doc.txt").write_text(" ".join(f"token{i % 50} and word{i % 7}." for i in range(600)))
    return root


def options(workspace, out, **kw):
    base = dict(model=str(workspace / "model"), target_length=512, output=str(out), recipe="smoke", data=str(workspace / "chat.jsonl"),
                device="cpu", progress=False, learning_rate=3e-3, batch_size=2, max_steps=8, save_steps=100, check=False)
    return TrainOptions(**{**base, **kw})


def losses(out):
    return [json.loads(line)["loss"] for line in open(out / "training_log.jsonl")]


def test_loss_decreases_and_the_checkpoint_restores(workspace, tmp_path):
    summary = train(options(workspace, tmp_path / "run", method="eabf", max_steps=12))
    curve = losses(tmp_path / "run")
    assert len(curve) == 12 and sum(curve[-3:]) / 3 < 0.8 * sum(curve[:3]) / 3
    model, tokenizer = ropekit.load_model(tmp_path / "run", device="cpu")
    assert model.config.ropekit["method"] == "eabf" and model.config._attn_implementation == "sdpa"
    assert tokenizer is not None and summary["data"]["kind"] == "chat" and summary["train_length"] == 512
    assert model.config.use_cache is True


def test_cream_on_text_at_the_native_length(workspace, tmp_path):
    summary = train(options(workspace, tmp_path / "cream", recipe="cream-paper", data=str(workspace / "doc.txt"), max_steps=4,
                            batch_size=2, warmup_steps=0, strategy_params={"sigma": "auto"}))
    assert summary["strategy"] == "cream" and summary["method"] == "linear" and summary["train_length"] == 64
    assert json.loads((tmp_path / "cream" / "training_summary.json").read_text())["strategy_params"]["sigma"] == "auto"


def test_lora_with_embeddings_and_norms_merges(workspace, tmp_path):
    summary = train(options(workspace, tmp_path / "lora", method="yarn", lora_r=4, train_embeddings_and_norms=True, max_steps=3))
    model, _ = ropekit.load_model(tmp_path / "lora", device="cpu")
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged into plain weights
    base, _ = ropekit.load_model(workspace / "model", device="cpu")
    assert not torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)  # embeddings trained
    assert summary["steps"] == 3


def test_output_directory_is_never_overwritten_unasked(workspace, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ropekit.RopekitError, match="not empty"):
        train(options(workspace, tmp_path / "mine"))
    with pytest.raises(ropekit.RopekitError, match="no checkpoint"):
        train(options(workspace, tmp_path / "mine", resume=True))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


KILLER = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from ropekit.training.api import TrainOptions, train

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)

    train(TrainOptions(**{options}), callbacks=[KillAfterSave()])
""")


def test_resume_after_sigkill_reaches_the_same_loss(workspace, tmp_path):
    kw = dict(strategy="cream", recipe="cream-paper", data=str(workspace / "doc.txt"), train_length=64, max_steps=8, save_steps=1,
              warmup_steps=2, learning_rate=1e-3)
    train(options(workspace, tmp_path / "unbroken", **kw))
    opts = {**options(workspace, tmp_path / "killed", **kw).__dict__}
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(kill_at=5, options=repr(opts)))
    process = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    assert (tmp_path / "killed" / "checkpoint-5").is_dir() and not (tmp_path / "killed" / "model.safetensors").exists()
    train(options(workspace, tmp_path / "killed", resume=True, **kw))
    unbroken, resumed = losses(tmp_path / "unbroken"), losses(tmp_path / "killed")
    assert resumed[-1] == pytest.approx(unbroken[-1], rel=1e-5)
    assert resumed[-3:] == pytest.approx(unbroken[-3:], rel=1e-5)


def test_two_processes_match_one(workspace, tmp_path):
    """accelerate launch, 2 CPU processes over gloo, micro batch 1 each = 1 process with micro batch 2."""
    common = ["-m", "ropekit", "train", str(workspace / "model"), "--target-length", "512", "--recipe", "smoke",
              "--data", str(workspace / "chat.jsonl"), "--batch-size", "2", "--max-steps", "4", "--lr", "3e-3", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *common, "--micro-batch-size", "2", "--output", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29617",
                          *common, "--micro-batch-size", "1", "--output", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "training_summary.json").read_text())
    assert summary["world_size"] == 2
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)


def test_memory_options_do_not_change_the_losses(workspace, tmp_path):
    plain = train(options(workspace, tmp_path / "plain", max_steps=4, chunked_loss=False))
    lean = train(options(workspace, tmp_path / "lean", max_steps=4, chunked_loss=True, loss_chunk=64, tile_mlp=32, offload_activations=True))
    assert lean["memory"] == {"chunked_loss": True, "liger": False, "tile_mlp": 32, "offload_activations": True}
    assert losses(tmp_path / "lean") == pytest.approx(losses(tmp_path / "plain"), rel=1e-5)
    assert plain["memory"]["chunked_loss"] is False


def test_a_deadline_stops_before_a_step_that_would_cross_it():
    from types import SimpleNamespace

    from ropekit.training.trainer import StopAt

    now = [100.0]
    stop = StopAt(112.0, clock=lambda: now[0])
    state, control = SimpleNamespace(global_step=0, max_steps=6), SimpleNamespace(should_training_stop=False)
    for step_seconds in (3.0, 5.0, 4.0):  # steps end at 103, 108, 112; the slowest (5 s, +10%) decides
        stop.on_step_begin(None, state, control)
        now[0] += step_seconds
        state.global_step += 1
        stop.on_step_end(None, state, control)
        if control.should_training_stop:
            break
    assert state.global_step == 2 and stop.stopped == 2  # at 108, a 5.5 s step would end after 112: not started
    late = StopAt(50.0, clock=lambda: 60.0)  # past the deadline before the first step: no step at all
    control = SimpleNamespace(should_training_stop=False)
    late.on_step_begin(None, SimpleNamespace(global_step=0, max_steps=6), control)
    assert control.should_training_stop and late.stopped == 0


def test_a_run_cut_by_its_deadline_is_saved_and_says_so(workspace, tmp_path):
    import time

    summary = train(options(workspace, tmp_path / "cut", max_steps=6, stop_at=time.time() - 1))
    assert summary["steps"] == 0 and summary["planned_steps"] == 6 and summary["stopped_at_deadline"] == 0
    assert (tmp_path / "cut" / "model.safetensors").exists()  # saved as it is
    assert json.loads((tmp_path / "cut" / "training_summary.json").read_text())["stopped_at_deadline"] == 0
    whole = train(options(workspace, tmp_path / "whole", max_steps=3, stop_at=time.time() + 3600))
    assert whole["steps"] == 3 and whole["stopped_at_deadline"] is None
