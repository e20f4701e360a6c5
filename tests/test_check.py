"""The before/after check (ropekit.eval.check): the same seeded items for both models, regressions flagged inside the
native window only, wired into every training run, the CLI's exit codes, the overlap warning."""

import json

import pytest
import torch
from typer.testing import CliRunner

from ropekit.cli import app
from ropekit.eval.check import check_models, compare_scores, overlap, passkey_noise
from ropekit.testing import NATIVE, save_tiny_checkpoint, tiny_tokenizer


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny model, an unchanged copy, a copy with a deterministically damaged output layer, and a held-out text."""
    root = tmp_path_factory.mktemp("check")
    vocab = len(tiny_tokenizer())
    save_tiny_checkpoint(root / "base", vocab_size=vocab)
    save_tiny_checkpoint(root / "same", vocab_size=vocab)
    from ropekit import load_model, save_model

    model, tokenizer = load_model(root / "base", device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    save_model(model, tokenizer, root / "damaged")
    (root / "held-out.txt").write_text(" ".join(f"Of Man's first disobedience, and the fruit {i}." for i in range(300)))
    return root


def rows(before_ppl, after_ppl, before_keys, after_keys, n=1024, trials=10):
    return {n: {"ppl": before_ppl, "passkey": before_keys, "trials": trials}}, {n: {"ppl": after_ppl, "passkey": after_keys, "trials": trials}}


def test_regression_rules():
    assert compare_scores(*rows(100, 109, 10, 10), native=8192)[1] == []  # +9% perplexity: within 10%
    assert "perplexity at 1K 100.0 → 120.0 (+20%" in compare_scores(*rows(100, 120, 10, 10), native=8192)[1][0]
    assert compare_scores(*rows(100, 100, 10, 9), native=8192)[1] == []  # one key of ten: within the noise
    assert "pass keys at 1K 10/10 → 5/10" in compare_scores(*rows(100, 100, 10, 5), native=8192)[1][0]
    assert compare_scores(*rows(100, 500, 10, 0, n=16384), native=8192)[1] == []  # beyond the window: reported, not judged
    assert passkey_noise(10, 10, 10) == 1.0 and round(passkey_noise(20, 10, 10), 2) == round(2 * (20 * 0.25) ** 0.5, 2)


def test_an_unchanged_copy_is_kept_and_a_damaged_one_regressed(pair):
    text = str(pair / "held-out.txt")
    same = check_models(pair / "base", pair / "same", lengths=[300], text=text, device="cpu")
    assert same["verdict"] == "kept" and same["native_length"] == NATIVE
    for row in same["rows"]:  # identical weights, identical items: identical numbers
        assert row["ppl_before"] == row["ppl_after"] and row["passkey_before"] == row["passkey_after"]
    assert [r["length"] for r in same["rows"]] == [NATIVE, 300] and same["rows"][1]["passkey_before"] is not None
    damaged = check_models(pair / "base", pair / "damaged", lengths=[300], text=text, device="cpu")
    assert damaged["verdict"] == "regressed" and damaged["regressions"][0].startswith("perplexity at 64")
    assert damaged["rows"][0]["ppl_before"] == same["rows"][0]["ppl_before"]  # the same items for every comparison


def test_cli_check_exit_codes(pair):
    text = str(pair / "held-out.txt")
    bad = CliRunner().invoke(app, ["check", str(pair / "base"), str(pair / "damaged"), "--text", text, "--device", "cpu",
                                   "--fail-on-regression"])
    assert bad.exit_code == 1 and "REGRESSED" in bad.output
    good = CliRunner().invoke(app, ["check", str(pair / "base"), str(pair / "same"), "--text", text, "--device", "cpu",
                                    "--fail-on-regression", "--json"])
    assert good.exit_code == 0 and json.loads(good.stdout)["verdict"] == "kept"
    missing = CliRunner().invoke(app, ["check", str(pair / "base"), str(pair / "nowhere")])
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1


def test_every_training_run_checks_itself_and_records_it(pair, tmp_path, capfd):
    from ropekit.train import TrainOptions, train

    text = pair / "held-out.txt"
    data = tmp_path / "doc.txt"
    data.write_text(text.read_text())  # train on the check text itself: the overlap warning must fire
    summary = train(TrainOptions(model=str(pair / "base"), target_length=512, output=str(tmp_path / "run"), recipe="smoke",
                                 data=str(data), device="cpu", progress=False, max_steps=2, batch_size=2, check_text=str(text),
                                 check_lengths=("300",)))
    check = summary["check"]
    assert check["verdict"] in ("kept", "regressed") and [r["length"] for r in check["rows"]] == [NATIVE, 300]
    assert check["overlap_with_training_text"] == 1.0 and "are in the training data" in capfd.readouterr().err
    saved = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert saved["check"]["rows"] == check["rows"]
    record = json.loads((tmp_path / "run" / "config.json").read_text())["ropekit"]
    assert record["check"]["verdict"] == check["verdict"]
    info = CliRunner().invoke(app, ["info", str(tmp_path / "run"), "--json"])
    assert json.loads(info.stdout)["ropekit"]["check"]["rows"] == check["rows"]  # `ropekit info` shows it
    assert overlap(str(text), "something else entirely") == 0.0
    # `ropekit report` renders the check of every evaluated checkpoint that carries one
    from ropekit.eval.runner import RunSpec, evaluate
    from ropekit.studies.report import render

    evaluate([RunSpec(str(tmp_path / "run"), label="trained"), RunSpec(str(pair / "base"), label="base")],
             {"ppl": {"windows": 1, "tail": 16, "source": str(text)}}, [NATIVE], tmp_path / "eval", device="cpu", progress=False)
    report = render(tmp_path / "eval")[0].read_text()
    section = report.split("## Before/after check")[1].split("\n## ")[0]
    first = check["rows"][0]
    assert f"| trained | {text} | {NATIVE} | inside | {first['ppl_before']:.1f} | {first['ppl_after']:.1f} |" in section
    assert "| base |" not in section and section.count("| trained |") == 2


def test_the_warning_names_numbers_causes_and_the_fix():
    from ropekit.eval.check import warning_line
    from ropekit.training.recipes import get_recipe

    kept = {"regressions": []}
    assert warning_line(kept) is None
    regressed = {"regressions": ["perplexity at 1K 103.2 → 216.6 (+110%, more than 10%)"]}
    line = warning_line(regressed, get_recipe("eabf-paper"), 2e-4)
    assert "103.2 → 216.6" in line and "loss on short answers only" in line and "high learning rate for that loss (0.0002)" in line
    assert "--recipe eabf-keep" in line and "\n" not in line
    assert "learning rate" not in warning_line(regressed, get_recipe("eabf-mix"), 2e-4)  # a lower rate kept less there
