"""In-window distillation towards the starting model (ropekit.training.distill): the term is the KL of the two models'
next-token distributions on in-window tokens only, zero for an identical copy, and a run trained with it ends closer
to the model it started from than the same run without it."""

import copy
import json

import pytest
import torch

import ropekit
from ropekit.testing import NATIVE, save_tiny_checkpoint, tiny_tokenizer
from ropekit.training.api import TrainOptions, train
from ropekit.training.distill import Distill


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    save_tiny_checkpoint(root / "model", vocab_size=len(tiny_tokenizer()))
    (root / "doc.txt").write_text(" ".join(f"token{i % 50} and word{i % 7}." for i in range(1500)))
    return root


class Outputs:
    def __init__(self, model, ids, positions):
        self.hidden_states = model(input_ids=ids, position_ids=positions, output_hidden_states=True, logits_to_keep=1).hidden_states


def reference_kl(teacher, student, ids, positions, window):
    """Explicit KL(teacher ‖ student) per token from full logits, averaged over tokens with position < window."""
    with torch.no_grad():
        t = torch.log_softmax(teacher(input_ids=ids, position_ids=positions).logits.float(), -1)
        s = torch.log_softmax(student(input_ids=ids, position_ids=positions).logits.float(), -1)
    per_token = (t.exp() * (t - s)).sum(-1)
    return per_token[positions < window].mean()


def test_the_term_is_the_in_window_kl(workspace):
    teacher, _ = ropekit.load_model(workspace / "model", device="cpu")
    student = copy.deepcopy(teacher)
    ids = torch.randint(0, 200, (2, 2 * NATIVE))
    positions = torch.arange(2 * NATIVE).expand(2, -1)
    same = Distill(copy.deepcopy(teacher), 1.0, NATIVE, chunk=7)
    assert same.term(student, {"input_ids": ids, "position_ids": positions}, Outputs(student, ids, positions)).abs() < 1e-6
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    term = Distill(teacher, 2.0, NATIVE, chunk=7).term(student, {"input_ids": ids, "position_ids": positions}, Outputs(student, ids, positions))
    assert term > 0 and torch.allclose(term, 2.0 * reference_kl(teacher, student, ids, positions, NATIVE), rtol=1e-4)
    beyond = positions + NATIVE  # no token inside the window: nothing to teach
    assert Distill(teacher, 1.0, NATIVE).term(student, {"input_ids": ids, "position_ids": beyond}, Outputs(student, ids, beyond)) == 0


def test_a_distilled_run_stays_closer_to_the_starting_model(workspace, tmp_path):
    base = dict(model=str(workspace / "model"), method="eabf", target_length=4 * NATIVE, train_length=NATIVE, recipe="smoke",
                data=str(workspace / "doc.txt"), device="cpu", progress=False, learning_rate=3e-3, batch_size=2, max_steps=6,
                save_steps=100, check=False)
    plain = train(TrainOptions(**base, output=str(tmp_path / "plain")))
    distilled = train(TrainOptions(**base, output=str(tmp_path / "distilled"), distill=20.0))
    assert plain["distill"] is None and distilled["distill"]["weight"] == 20.0 and distilled["distill"]["window"] == NATIVE
    start, _ = ropekit.load_model(workspace / "model", device="cpu")
    ids = torch.randint(0, 200, (4, NATIVE), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(NATIVE).expand(4, -1)
    gaps = {name: reference_kl(start, ropekit.load_model(tmp_path / name, device="cpu")[0], ids, positions, NATIVE)
            for name in ("plain", "distilled")}
    assert gaps["distilled"] < 0.8 * gaps["plain"], gaps
    record = json.loads((tmp_path / "distilled" / "training_summary.json").read_text())
    assert record["distill"]["weight"] == 20.0


def test_distill_refuses_a_sharded_launch_in_one_line(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ropekit.RopekitError, match="distill"):
        train(TrainOptions(model=str(workspace / "model"), method="eabf", target_length=4 * NATIVE, train_length=NATIVE, recipe="smoke",
                           data=str(workspace / "doc.txt"), device="cpu", progress=False, output=str(tmp_path / "x"), distill=1.0, check=False))


def test_the_recipes_default_distillation_steps_aside_under_sharding(workspace, tmp_path, monkeypatch, capfd):
    """eabf-keep distils by default; where the teacher cannot run (FSDP here) the run goes on without it and says so."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    summary = train(TrainOptions(model=str(workspace / "model"), target_length=4 * NATIVE, train_length=NATIVE, recipe="eabf-keep",
                                 data=str(workspace / "doc.txt"), device="cpu", progress=False, output=str(tmp_path / "x"),
                                 max_steps=1, batch_size=2, check=False))
    assert summary["recipe"]["distill"] == 1.0 and summary["distill"] is None
    assert "in-window distillation is off here" in capfd.readouterr().err
