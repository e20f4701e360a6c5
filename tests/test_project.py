"""Project hygiene that users rely on: CI runs the README's test command; the CLI answers --help everywhere."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ropekit.cli import app

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = setup_commands()
    assert len(commands) == 2
    assert "ropekit compare" in commands[0] and "pytest" in commands[1]
    assert commands[1] in ROOT.joinpath(".ci", "run").read_text()


@pytest.mark.parametrize("command", [[], ["methods"], ["info"], ["extend"], ["compare"], ["train"]])
def test_help(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_methods_json_lists_every_method():
    import json

    result = CliRunner().invoke(app, ["methods", "--json"])
    names = {m["name"] for m in json.loads(result.stdout)}
    assert {"linear", "ntk", "dynamic", "yarn", "llama3", "longrope", "abf", "logscale", "eabf", "self_extend", "none"} <= names


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["extend", str(tmp_path / "nothing"), "--method", "yarn", "-t", "32k", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such model file or directory" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["extend", "x", "--method", "yarn", "-p", "novalue", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "is not key=value" in result.output
    result = runner.invoke(app, ["compare", "--methods", "none,warp"])
    assert result.exit_code == 2 and "unknown method 'warp'" in result.output


def test_cli_extend_and_info_on_a_tiny_checkpoint(tmp_path):
    from ropekit.testing import save_tiny_checkpoint, tiny_tokenizer

    save_tiny_checkpoint(tmp_path / "base", vocab_size=len(tiny_tokenizer()))
    runner = CliRunner()
    result = runner.invoke(app, ["extend", str(tmp_path / "base"), "-m", "eabf", "-t", "256", "-p", "layers=all", "-o", str(tmp_path / "ext")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["info", str(tmp_path / "ext"), "--json"])
    assert result.exit_code == 0, result.output
    import json

    facts = json.loads(result.stdout)
    assert facts["ropekit"]["method"] == "eabf" and facts["attention_backend"] == "sdpa" and facts["ropekit_attention"] == ["logit_scale"]
    assert facts["ropekit"]["attention"]["logit_scale"]["layers"] == [0, 1, 2, 3]
    result = runner.invoke(app, ["extend", str(tmp_path / "base"), "-m", "eabf", "-t", "256", "-o", str(tmp_path / "ext")])
    assert result.exit_code == 2 and "not empty" in result.output


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    files = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
    assert len(files) >= 4
    kinds = {f.stem: str(load_config_from_file(str(f)).distributed_type) for f in files}
    assert kinds["deepspeed-zero3"].endswith("DEEPSPEED") and kinds["fsdp2"].endswith("FSDP")
    assert load_config_from_file(str(ROOT / "configs/accelerate/fsdp2-context-parallel.yaml")).parallelism_config["parallelism_config_cp_size"] == 2


def test_public_api_and_moved_module_paths():
    """The public names users import, and every documented module path that moved: the old path is the very module
    that owns the names now (so a patch through either reaches the code)."""
    import importlib

    import ropekit

    for name in ("load_model", "extend", "save_model", "describe", "restore", "position_ids", "parse_length", "list_methods",
                 "s2_attention", "RopekitError"):
        assert callable(getattr(ropekit, name)), name
    from ropekit._moved import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from ropekit.train import TrainOptions, train  # the documented entry point, through its old path
    from ropekit.training.api import train as owner

    assert train is owner and TrainOptions.__module__ == "ropekit.training.stage"
    from ropekit.positions import cream_blocks, sample  # noqa: F401
    from ropekit.training import RopekitTrainer, get_recipe  # names the former ropekit.training module held
    from ropekit.training.trainer import RopekitTrainer as trainer_owner

    assert RopekitTrainer is trainer_owner and get_recipe("eabf-paper").name == "eabf-paper"
    import ropekit.eval
    import ropekit.integrations.lm_eval
    import ropekit.testing

    assert callable(ropekit.testing.tiny_model) and hasattr(ropekit.integrations.lm_eval, "RopekitLM")
    assert {"passkey", "ppl"} <= set(ropekit.eval.TASKS)


def test_no_source_file_over_500_lines():
    too_long = {str(p.relative_to(ROOT)): n for p in (ROOT / "src").rglob("*.py")
                if (n := len(p.read_text().splitlines())) > 500}
    assert not too_long, too_long


def test_every_help_shows_its_text_literally():
    """Help is rendered as written: bracketed extras (pip install 'ropekit[lm-eval]') and code samples survive,
    where rich markup would swallow "[lm-eval]" as a style tag."""
    import click
    import typer.main

    group = typer.main.get_command(app)
    ctx = click.Context(group, info_name="ropekit", terminal_width=400, max_content_width=400)
    checked = 0
    for name, command in group.commands.items():
        sub = click.Context(command, parent=ctx, info_name=name, terminal_width=400, max_content_width=400)
        text = " ".join(command.get_help(sub).split())
        doc = " ".join((command.help or "").split())
        for literal in re.findall(r"\S*\[[^\]\s]+\]\S*", doc):  # e.g. 'ropekit[lm-eval]'
            assert literal in text, (name, literal)
            checked += 1
        for option in command.params:
            for literal in re.findall(r"\S*\[[^\]\s]+\]\S*", " ".join((getattr(option, "help", None) or "").split())):
                assert literal in text, (name, option.name, literal)
                checked += 1
    assert checked >= 1  # the lm-eval extra at least


def test_printed_errors_and_hints_keep_their_brackets():
    from ropekit.cli import friendly
    from ropekit.errors import RopekitError

    @friendly
    def fails():
        raise RopekitError("lm-eval is not installed", "pip install 'ropekit[lm-eval]'")

    import typer

    app_one = typer.Typer()
    app_one.command()(fails)
    out = CliRunner().invoke(app_one, [])
    assert out.exit_code == 2 and "pip install 'ropekit[lm-eval]'" in out.output and len(out.output.strip().splitlines()) == 1
