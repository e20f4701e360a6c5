"""save_pretrained → ropekit.load_model restores the extension exactly; plain transformers gets the frequencies."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import ropekit
from ropekit.testing import NATIVE, random_ids, tiny_model

from conftest import rel_err

TARGET = 4 * NATIVE


@pytest.mark.parametrize("method,params", [("eabf", {}), ("yarn+logscale", {"layers": "all"}), ("yarn", {}), ("dynamic", {}),
                                           ("self_extend", {"group": 4, "window": 16})])
def test_save_then_load_model_gives_identical_logits(tmp_path, method, params):
    target = 3 * NATIVE if method == "self_extend" else TARGET
    model = ropekit.extend(tiny_model("llama"), method, target_length=target, **params)
    ropekit.save_model(model, None, tmp_path / "ckpt")
    loaded, tokenizer = ropekit.load_model(tmp_path / "ckpt", device="cpu")
    assert tokenizer is None  # weights-only test checkpoint
    assert loaded.config.ropekit == json.loads(json.dumps(model.config.ropekit))
    assert loaded.config._attn_implementation == model.config._attn_implementation
    ids = random_ids(target - 2)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


PLAIN = """
import sys, torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
assert "ropekit" not in sys.modules
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.arange(3, {length})[None] % 250 + 3
with torch.no_grad():
    logits = model(ids).logits
save_file({{"logits": logits.contiguous(), "inv_freq": model.model.rotary_emb.inv_freq.contiguous()}}, sys.argv[2])
print(model.config._attn_implementation, model.config.max_position_embeddings, model.config.rope_parameters)
assert "ropekit" not in sys.modules
"""


@pytest.mark.parametrize("method", ["eabf", "yarn", "linear", "ntk", "llama3"])
def test_plain_transformers_loads_the_frequency_part(tmp_path, method):
    """In a fresh interpreter that never imports ropekit."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    base = tiny_model("llama")
    model = ropekit.extend(copy.deepcopy(base), method, target_length=TARGET)
    model.save_pretrained(tmp_path / "ckpt")
    script = tmp_path / "plain.py"
    script.write_text(PLAIN.format(length=TARGET - 2 + 3))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt"), str(tmp_path / "out.safetensors")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "sdpa" and int(done.stdout.split()[1]) == model.config.max_position_embeddings
    plain = load_file(tmp_path / "out.safetensors")
    frequency_only = ropekit.extend(copy.deepcopy(base), "abf" if method == "eabf" else method, target_length=TARGET)
    ids = torch.arange(3, TARGET - 2 + 3)[None] % 250 + 3
    with torch.no_grad():
        assert rel_err(plain["logits"], frequency_only(ids).logits) < 1e-6
    assert torch.equal(plain["inv_freq"], frequency_only.model.rotary_emb.inv_freq)


def test_with_ropekit_imported_from_pretrained_runs_the_whole_extension(tmp_path):
    """The plan lives in config.json, so a plain from_pretrained in a process that imported ropekit is exact too."""
    model = ropekit.extend(tiny_model("llama"), "eabf", target_length=TARGET)
    model.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = random_ids(TARGET - 2)
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, model(ids).logits)


def test_restore_after_plain_load(tmp_path):
    model = ropekit.extend(tiny_model("llama"), "eabf", target_length=TARGET)
    model.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ropekit.restore(plain)
    ids = random_ids(TARGET - 2)
    with torch.no_grad():
        assert rel_err(plain(ids).logits, model(ids).logits) < 1e-6


def test_save_refuses_to_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ropekit.RopekitError, match="not empty"):
        ropekit.save_model(tiny_model(), None, tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_record_is_complete():
    model = ropekit.extend(tiny_model("llama"), "yarn+logscale", target_length=TARGET, beta_fast=16)
    record = model.config.ropekit
    assert record["method"] == "yarn+logscale"
    assert record["native_length"] == NATIVE and record["target_length"] == TARGET
    assert record["params"]["yarn"]["beta_fast"] == 16.0
    assert record["original"]["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e4}
    assert record["attention"]["logit_scale"] == {"scale_length": NATIVE, "layers": [2, 3]}
