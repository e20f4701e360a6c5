"""Self-contained checkpoints: with trust_remote_code, plain transformers runs ropekit's extension exactly (no ropekit
needed); without it, loading refuses; frequency-only exports stay plain."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import ropekit
from ropekit.export import bundle
from ropekit.export import modeling_ropekit
from ropekit.extension import SUPPORTED_MODEL_TYPES
from ropekit.testing import NATIVE, random_ids, tiny_model, tiny_tokenizer

from conftest import rel_err

TARGET = 4 * NATIVE
NEW_TOKENS = 8
# (model type, method, params): the attention-side methods on every architecture, plus combinations and dynamic NTK
SE = {"group": 8, "window": 16}
# fast: one subprocess over a few cases; slow (-m slow): every other supported architecture with both attention methods
FAST_CASES = [("llama", "eabf", {}), ("llama", "self_extend", SE), ("llama", "yarn+logscale", {"layers": "all"}),
              ("llama", "dynamic", {}), ("gemma2", "self_extend", SE)]
SLOW_CASES = ([(t, m, p) for t in SUPPORTED_MODEL_TYPES for m, p in (("eabf", {}), ("self_extend", SE)) if (t, m, p) not in FAST_CASES]
              + [("qwen2", "logscale", {"layers": "1,3"}), ("gemma3_text", "dynamic", {})])
CASES = FAST_CASES + SLOW_CASES
# inputs of varying length (dynamic NTK must not depend on what ran before): beyond native, shorter but beyond, native
LENGTHS = (3 * NATIVE + 40, 2 * NATIVE + 9, NATIVE - 5)
PROMPT = 2 * NATIVE + 3

# Runs in a fresh interpreter. mode "blocked": ropekit cannot be imported. mode "bundled-first": the bundled code is
# loaded first, then ropekit is imported and must take over without applying anything twice.
SCRIPT = r'''
import json, sys
mode, jobs_path = sys.argv[1], sys.argv[2]
if mode == "blocked":
    sys.modules["ropekit"] = None  # any `import ropekit` now raises ImportError
import torch
torch.set_num_threads(2)
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

events = []
def audit(event, args):
    if AUDITING[0] and (event == "open" or event.startswith(("socket.", "subprocess.", "os.system", "os.exec", "urllib."))):
        events.append(event)
AUDITING = [False]
sys.addaudithook(audit)

for job in json.load(open(jobs_path)):
    inputs = load_file(job["inputs"])
    model = AutoModelForCausalLM.from_pretrained(job["dir"], trust_remote_code=True).eval()
    if mode == "bundled-first":
        import ropekit  # noqa: F401  (must replace the bundled wrappers by its own)
    out = {}
    AUDITING[0] = True  # nothing below may open a file or a socket
    with torch.no_grad():
        for i, length in enumerate(job["lengths"]):
            out[f"logits{i}"] = model(inputs["ids"][:, :length]).logits
        gen = model.generate(inputs["ids"][:, :job["prompt"]], max_new_tokens=job["new_tokens"], do_sample=False,
                             use_cache=True, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    AUDITING[0] = False
    out["tokens"] = gen.sequences
    out["scores"] = torch.stack(gen.scores)
    save_file({k: v.contiguous() for k, v in out.items()}, job["out"])
    assert ("ropekit" in sys.modules and sys.modules["ropekit"] is not None) == (mode == "bundled-first")
    print(job["name"], type(model).__name__, model.config.model_type)
print("AUDIT", json.dumps(sorted(set(events))))
'''


def _extended(model_type, method, params):
    target = 3 * NATIVE + 41 if method == "self_extend" else TARGET
    return ropekit.extend(tiny_model(model_type), method, target_length=target, **params)


def _run(tmp_path, mode, cases):
    jobs = []
    ids = random_ids(max(LENGTHS), seed=5)
    save_file({"ids": ids}, tmp_path / "ids.safetensors")
    for model_type, method, params in cases:
        name = f"{model_type}-{method}"
        ropekit.save_model(_extended(model_type, method, params), tiny_tokenizer(), tmp_path / name)
        jobs.append({"name": name, "dir": str(tmp_path / name), "inputs": str(tmp_path / "ids.safetensors"),
                     "out": str(tmp_path / f"{name}-{mode}.safetensors"), "lengths": LENGTHS, "prompt": PROMPT,
                     "new_tokens": NEW_TOKENS})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "script.py").write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(tmp_path / "script.py"), mode, str(tmp_path / "jobs.json")],
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    audit = json.loads(done.stdout.strip().splitlines()[-1].removeprefix("AUDIT "))
    return ids, {job["name"]: load_file(job["out"]) for job in jobs}, audit, done.stdout


def _ropekit_outputs(directory, ids):
    """What ropekit's own runtime gives for the same inputs (ropekit.load_model, same sequence of calls)."""
    model, _ = ropekit.load_model(directory, device="cpu")
    out = {}
    with torch.no_grad():
        for i, length in enumerate(LENGTHS):
            out[f"logits{i}"] = model(ids[:, :length]).logits
        gen = model.generate(ids[:, :PROMPT], max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, pad_token_id=0,
                             output_scores=True, return_dict_in_generate=True)
    out["tokens"], out["scores"] = gen.sequences, torch.stack(gen.scores)
    return model, out


@pytest.fixture(scope="module")
def blocked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    ids, outputs, audit, stdout = _run(tmp, "blocked", FAST_CASES)
    return tmp, ids, outputs, audit, stdout


@pytest.fixture(scope="module")
def blocked_slow(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle-slow")
    ids, outputs, audit, stdout = _run(tmp, "blocked", SLOW_CASES)
    return tmp, ids, outputs, audit, stdout


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.slow] if c in SLOW_CASES else []) for c in CASES],
                         ids=[f"{t}-{m}" for t, m, _ in CASES])
def test_trust_remote_code_without_ropekit_equals_load_model(request, case):
    tmp, ids, outputs, audit, stdout = request.getfixturevalue("blocked_slow" if case in SLOW_CASES else "blocked")
    assert audit == []  # the bundled code opened no file and no socket while running
    name = f"{case[0]}-{case[1]}"
    assert f"{name} Ropekit" in stdout and f"ropekit_{case[0]}" in stdout  # the bundled class ran, not the stock one
    remote = outputs[name]
    model, local = _ropekit_outputs(tmp / name, ids)
    for i in range(len(LENGTHS)):
        assert rel_err(remote[f"logits{i}"], local[f"logits{i}"]) <= 1e-5, (name, LENGTHS[i])
    assert torch.equal(remote["tokens"], local["tokens"])  # KV-cache greedy generation
    assert rel_err(remote["scores"], local["scores"]) <= 1e-5
    # and the comparison can fail: the same weights without the extension's runtime part differ
    plain = AutoModelForCausalLM.from_config(bundle.load_config(tmp / name)).eval()
    plain.load_state_dict(model.state_dict())
    plain.config.ropekit = {**plain.config.ropekit, "attention": {}}
    with torch.no_grad():
        if case[1] != "dynamic":  # dynamic: see the stateful test below
            assert rel_err(plain(ids[:, :LENGTHS[0]]).logits, local["logits0"]) > 1e-4


def test_dynamic_ntk_is_stateless_in_both_runtimes(blocked):
    """transformers alone keeps the longer input's scaling for a later shorter one; the bundle and ropekit do not."""
    tmp, ids, outputs, _, _ = blocked
    fresh, _ = ropekit.load_model(tmp / "llama-dynamic", device="cpu")
    with torch.no_grad():
        alone = fresh(ids[:, :LENGTHS[1]]).logits  # a model that never saw the longer input
    assert rel_err(outputs["llama-dynamic"]["logits1"], alone) <= 1e-6
    stateful = AutoModelForCausalLM.from_config(bundle.load_config(tmp / "llama-dynamic")).eval()
    stateful.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        stateful(ids[:, :LENGTHS[0]])
        assert rel_err(stateful(ids[:, :LENGTHS[1]]).logits, alone) > 1e-4  # what plain transformers would have done


def test_with_ropekit_imported_trust_remote_code_applies_the_plan_once(tmp_path):
    model = _extended("llama", "eabf", {})
    ropekit.save_model(model, None, tmp_path / "ckpt")
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=True).eval()
    assert type(remote).__name__ == "RopekitLlamaForCausalLM"
    assert getattr(ALL_ATTENTION_FUNCTIONS["sdpa"], "_ropekit_wrapped", False)  # ropekit's wrapper stays the one that runs
    ids = random_ids(TARGET - 3)
    with torch.no_grad():
        assert rel_err(remote(ids).logits, model(ids).logits) <= 1e-6


def test_bundled_code_loaded_before_ropekit_is_replaced_not_stacked(tmp_path):
    cases = [("llama", "eabf", {}), ("gemma2", "self_extend", {"group": 8, "window": 16})]
    ids, outputs, _, _ = _run(tmp_path, "bundled-first", cases)
    for model_type, method, _ in cases:
        _, local = _ropekit_outputs(tmp_path / f"{model_type}-{method}", ids)
        for i in range(len(LENGTHS)):
            assert rel_err(outputs[f"{model_type}-{method}"][f"logits{i}"], local[f"logits{i}"]) <= 1e-5


def test_plain_from_pretrained_refuses_and_names_the_fix(tmp_path):
    ropekit.save_model(_extended("llama", "eabf", {}), None, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=False)
    script = ("import sys\nfrom transformers import AutoModelForCausalLM\n"
              f"AutoModelForCausalLM.from_pretrained({str(tmp_path / 'ckpt')!r})\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and "trust_remote_code=True" in done.stderr


def test_frequency_only_methods_are_not_bundled(tmp_path):
    for method in ("yarn", "abf", "linear", "llama3"):
        ropekit.save_model(_extended("llama", method, {}), None, tmp_path / method)
        config = json.loads((tmp_path / method / "config.json").read_text())
        assert config["model_type"] == "llama" and "auto_map" not in config
        assert not (tmp_path / method / bundle.BUNDLE_FILE).exists()


def test_bundled_config_names_the_classes_of_the_bundled_file(tmp_path):
    assert {k: (c.__name__, m.__name__) for k, (c, m) in modeling_ropekit.CLASSES.items()} == bundle.CLASS_NAMES
    assert set(bundle.CLASS_NAMES) == set(SUPPORTED_MODEL_TYPES)
    ropekit.save_model(_extended("gemma3_text", "eabf", {}), None, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model_type"] == "ropekit_gemma3_text"
    assert config["auto_map"] == {"AutoConfig": "modeling_ropekit.RopekitGemma3TextConfig",
                                  "AutoModelForCausalLM": "modeling_ropekit.RopekitGemma3ForCausalLM"}
    assert (tmp_path / "ckpt" / "modeling_ropekit.py").read_bytes() == bundle.bundled_source().read_bytes()


def test_untested_architecture_with_attention_side_is_refused_before_writing(tmp_path, monkeypatch):
    model = _extended("llama", "eabf", {})
    monkeypatch.setattr(bundle, "CLASS_NAMES", {k: v for k, v in bundle.CLASS_NAMES.items() if k != "llama"})
    with pytest.raises(ropekit.RopekitError, match="no bundled ropekit modeling code"):
        ropekit.save_model(model, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------------
# What the remote-code file may do (reviewed by its syntax tree)

ALLOWED_IMPORTS = {"math", "torch", "transformers"}
FORBIDDEN_NAMES = {"open", "exec", "eval", "compile", "__import__", "input", "globals", "locals", "vars", "breakpoint",
                   "getattr_static", "os", "sys", "subprocess", "socket", "urllib", "requests", "http", "importlib",
                   "pathlib", "shutil", "pickle", "io", "builtins"}
FORBIDDEN_ATTRIBUTES = {"load", "save", "from_pretrained", "save_pretrained", "hf_hub_download", "snapshot_download",
                        "read_text", "read_bytes", "write_text", "write_bytes", "system", "popen", "urlopen", "hub",
                        "load_state_dict", "from_file", "compile"}


def test_remote_code_imports_only_torch_transformers_math_and_touches_no_file_or_network():
    tree = ast.parse(bundle.bundled_source().read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Name):
            assert node.id not in FORBIDDEN_NAMES, f"line {node.lineno}: {node.id}"
        elif isinstance(node, ast.Attribute):
            assert node.attr not in FORBIDDEN_ATTRIBUTES, f"line {node.lineno}: .{node.attr}"
            assert not (node.attr.startswith("__") and node.attr not in ("__name__", "__module__", "__init__")), f"line {node.lineno}: .{node.attr}"
    assert imported == ALLOWED_IMPORTS
    # the checker itself catches what it should
    bad = ast.parse("import os\nopen('x')\nfrom transformers import x\nx.from_pretrained('y')")
    names = {n.id for n in ast.walk(bad) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(bad) if isinstance(n, ast.Attribute)}
    assert {"open", "from_pretrained"} <= names & (FORBIDDEN_NAMES | FORBIDDEN_ATTRIBUTES)


# ----------------------------------------------------------------------------------------------------------------------
# The knowingly plain variant


def test_export_frequency_only_drops_the_attention_side_and_says_so(tmp_path):
    base = tiny_model("llama")
    eabf = ropekit.extend(tiny_model("llama"), "eabf", target_length=TARGET)
    ropekit.save_model(eabf, tiny_tokenizer(), tmp_path / "eabf")
    dropped = bundle.export_frequency_only(tmp_path / "eabf", tmp_path / "plain")
    assert len(dropped) == 1 and "logit scale" in dropped[0] and "layers 2-3" in dropped[0]
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    assert config["ropekit"]["method"] == "abf" and config["ropekit"]["attention"] == {}
    assert config["ropekit"]["dropped_attention"]["logit_scale"]["layers"] == [2, 3]
    assert not (tmp_path / "plain" / bundle.BUNDLE_FILE).exists()
    assert (tmp_path / "plain" / "tokenizer.json").read_bytes() == (tmp_path / "eabf" / "tokenizer.json").read_bytes()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    abf = ropekit.extend(base, "abf", target_length=TARGET)
    ids = random_ids(TARGET - 1)
    with torch.no_grad():
        assert rel_err(plain(ids).logits, abf(ids).logits) <= 1e-6
    with pytest.raises(ropekit.RopekitError, match="not empty"):
        bundle.export_frequency_only(tmp_path / "eabf", tmp_path / "plain")


def test_export_frequency_only_cli(tmp_path):
    from typer.testing import CliRunner

    from ropekit.cli import app

    ropekit.save_model(_extended("llama", "self_extend", {"group": 8, "window": 16}), None, tmp_path / "se")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "se"), "--frequency-only", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "dropped" in result.output and "Self-Extend" in result.output
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["ropekit"]["method"] == "none" and config["max_position_embeddings"] == NATIVE
    result = CliRunner().invoke(app, ["export", str(tmp_path / "se")])
    assert result.exit_code == 2 and "--frequency-only" in result.output
