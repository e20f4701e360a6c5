"""The real embedded default model (SmolLM2-135M-Instruct). Slow: run with ``pytest -m slow``."""

import copy

import pytest
import torch

import ropekit
from ropekit.eval import run_passkey

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return ropekit.load_model("smollm2-135m", device="cpu", dtype="float32")


def test_default_model_loads(smollm2):
    model, tokenizer = smollm2
    facts = ropekit.describe(model)
    assert facts["model_type"] == "llama" and facts["native_length"] == 8192
    assert facts["rope_parameters"] == {"rope_theta": 100000.0, "rope_type": "default"}
    assert 134_000_000 < facts["parameters"] < 135_000_000
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


def test_passkey_at_4k_succeeds(smollm2):
    model, tokenizer = smollm2
    result = run_passkey(model, tokenizer, [4096], trials=3, seed=0, progress=False)
    assert result["lengths"]["4096"]["accuracy"] == 100.0


def test_eabf_retrieves_beyond_the_native_window_where_the_original_fails(smollm2):
    model, tokenizer = smollm2
    depths = [0.5]
    original = run_passkey(model, tokenizer, [12288], trials=1, depths=depths, seed=0, progress=False)
    extended = ropekit.extend(copy.deepcopy(model), "eabf", target_length="32k")
    result = run_passkey(extended, tokenizer, [12288], trials=1, depths=depths, seed=0, progress=False)
    assert original["lengths"]["12288"]["accuracy"] == 0.0
    assert result["lengths"]["12288"]["accuracy"] == 100.0


def test_cli_extend_checkpoint_round_trip(tmp_path, smollm2):
    from typer.testing import CliRunner

    from ropekit.cli import app

    result = CliRunner().invoke(app, ["extend", "smollm2-135m", "--method", "yarn+logscale", "--target-length", "32k",
                                      "--output", str(tmp_path / "yarn")])
    assert result.exit_code == 0, result.output
    loaded, tokenizer = ropekit.load_model(tmp_path / "yarn", device="cpu")
    assert loaded.config.ropekit["method"] == "yarn+logscale" and tokenizer is not None
    model, _ = smollm2
    reference = ropekit.extend(copy.deepcopy(model), "yarn+logscale", target_length="32k")
    ids = torch.randint(0, 1000, (1, 300))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, reference(ids).logits)


def test_the_check_flags_a_damaged_smollm2_and_keeps_an_unchanged_one(smollm2, tmp_path):
    """Deterministic noise on every weight matrix (σ = 10% of each matrix's own scale) must show as a regression inside
    the window; the unchanged model against itself must not."""
    from ropekit.eval.check import check_models

    model, tokenizer = smollm2
    damaged = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in damaged.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=generator) * 0.1 * p.std())
    ropekit.save_model(damaged, tokenizer, tmp_path / "damaged")
    bad = check_models("smollm2-135m", tmp_path / "damaged", length=512, windows=2, trials=6, device="cpu")
    good = check_models("smollm2-135m", "smollm2-135m", length=512, windows=2, trials=6, device="cpu")
    assert bad["verdict"] == "regressed", bad["rows"]
    assert good["verdict"] == "kept" and good["rows"][0]["ppl_before"] == good["rows"][0]["ppl_after"]
    assert good["rows"][0]["passkey_before"] == 6  # the original finds every in-window key
