"""The evaluation suite: task generators, metrics on hand-made cases, prefix sharing, entropy, cache/resume, report."""

import json
import math

import pytest
import torch

import ropekit
from ropekit.eval import TASKS
from ropekit.methods.entropy_probe import document_entropy, probe_rows, row_entropy
from ropekit.eval.niah import niah_cells, run_niah
from ropekit.eval.retrieval import kv_sample, lines_sample, run_kv, run_lines
from ropekit.eval.runner import RunSpec, evaluate
from ropekit.testing import save_tiny_checkpoint, tiny_model, tiny_tokenizer

from test_eval import OracleModel


@pytest.fixture(scope="module")
def hay(tmp_path_factory):
    path = tmp_path_factory.mktemp("hay") / "hay.txt"
    path.write_text("\n".join(f"Verse {i}: the quiet river runs past the old mill and the meadow." for i in range(4000)))
    return str(path)


def test_every_advertised_task_is_registered():
    assert {"ppl", "passkey", "niah", "lines", "kv", "ruler", "longbench", "entropy"} <= set(TASKS)


def test_niah_cells_exact_length_deterministic_and_needle_at_depth(hay):
    tok = tiny_tokenizer()
    cell = niah_cells(tok, 1500, [0.0, 0.5, 1.0], seed=1, trial=0, haystack=hay)
    assert cell == niah_cells(tok, 1500, [0.0, 0.5, 1.0], seed=1, trial=0, haystack=hay)
    assert cell["value"] != niah_cells(tok, 1500, [0.0, 0.5, 1.0], seed=2, trial=0, haystack=hay)["value"]
    for point, depth in zip(cell["points"], [0.0, 0.5, 1.0]):
        total = len(cell["intro"]) + len(cell["hay"]) + len(cell["needle"]) + len(cell["question"]) + len(cell["answer"])
        assert total == 1500
        assert abs(point / len(cell["hay"]) - depth) < 0.06  # snapped to a line break near the depth


def test_niah_perfect_and_wrong_models(hay):
    tok = tiny_tokenizer()
    perfect = run_niah(OracleModel(True), tok, [800], depths=[0, 0.5, 1], haystack=hay, share_prefix=False, progress=False)
    wrong = run_niah(OracleModel(False), tok, [800], depths=[0, 0.5, 1], haystack=hay, share_prefix=False, progress=False)
    assert perfect[800]["score"] == 100.0 and wrong[800]["score"] == 0.0
    assert set(perfect[800]["depths"]) == {"0", "0.5", "1"}


@pytest.mark.parametrize("method", ["none", "eabf"])
def test_niah_shared_prefix_equals_separate_forwards(hay, method):
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok))
    if method != "none":
        ropekit.extend(model, method, target_length=2048)
    shared = run_niah(model, tok, [600, 900], depths=[0, 0.3, 0.6, 1], trials=2, haystack=hay, share_prefix=True, progress=False)
    separate = run_niah(model, tok, [600, 900], depths=[0, 0.3, 0.6, 1], trials=2, haystack=hay, share_prefix=False, progress=False)
    assert shared[600]["shared_prefix"] and not separate[600]["shared_prefix"]
    for n in (600, 900):
        assert [r["predicted"] for r in shared[n]["samples"]] == [r["predicted"] for r in separate[n]["samples"]]


def test_lines_and_kv_samples_fit_and_hold_the_answer():
    import json
    import random

    tok = tiny_tokenizer()
    positions = [0.0, 0.5, 1.0]
    for make in (lines_sample, kv_sample):
        sample = make(tok, 1200, positions, random.Random(3))
        assert sample == make(tok, 1200, positions, random.Random(3))  # deterministic
        text = tok.decode(sample["context"])
        for q in sample["questions"]:
            total = len(sample["context"]) + len(q["question"]) + len(q["answer"])
            assert 1100 < total <= 1200  # the length is filled with records, never exceeded
            assert tok.decode(q["answer"]) == q["value"]
            # the prompt ends by starting the asked record in its own form; the record is in the context once
            asked = tok.decode(q["question"])
            if make is lines_sample:
                assert asked.endswith(f"line {q['gold']}: <") and text.count(f"line {q['gold']}: <{q['value']}>") == 1
            else:
                assert asked.endswith(f' "{q["gold"]}": "') and text.count(f'"{q["gold"]}": "{q["value"]}"') == 1
            assert text.count(f"{q['gold']}:") + text.count(f'{q["gold"]}":') == 1  # the key names one record only
        golds = [q["gold"] for q in sample["questions"]]
        at = [text.index(g) for g in golds]
        assert at == sorted(at) and len(set(golds)) == 3  # first, middle and last record
    kv = kv_sample(tok, 1200, positions, random.Random(5))
    obj = tok.decode(kv["context"]).split("JSON data:\n", 1)[1]
    data = json.loads(obj)  # valid JSON
    assert len(data) == kv["records"] and all(data[q["gold"]] == q["value"] for q in kv["questions"])


def test_keys_are_single_tokens_where_the_tokenizer_allows():
    from ropekit.eval.retrieval import key_words

    tok = tiny_tokenizer()  # one token per byte: no word is one token, so the shortest words come first
    pool = key_words(tok, " ")
    sizes = [len(tok(" " + w).input_ids) - 1 for w in pool[:200]]
    assert sizes == sorted(sizes) and len(set(pool)) == len(pool)


def test_record_count_search_with_a_guess_finds_the_same_count():
    """kv prompts bracket the binary search around a first guess (fewer tokenisations of a long prompt): same answer."""
    import random

    from ropekit.eval.retrieval import _fit

    rng = random.Random(0)
    for _ in range(300):
        sizes = [rng.randint(1, 9) for _ in range(rng.randint(3, 400))]
        prefix = [0]
        for size in sizes:
            prefix.append(prefix[-1] + size)
        calls = []

        def count(n, prefix=prefix, calls=calls):
            calls.append(n)
            return 20 + prefix[n]

        high = len(sizes)
        length = rng.randint(count(2), count(high) + 50)
        plain = _fit("t", count, 2, high, length)
        for guess in (None, 3, plain, plain + 1, high - 1, rng.randint(2, high)):
            assert _fit("t", count, 2, high, length, guess) == plain


@pytest.mark.parametrize("run", [run_lines, run_kv])
def test_lines_and_kv_metrics(run, monkeypatch):
    import ropekit.eval.retrieval as retrieval
    from ropekit.eval.scoring import Scored

    tok = tiny_tokenizer()
    asked = []

    def fake_scoring(model, prefix, continuations):  # right about the first position only
        asked.append(len(continuations))
        return [Scored(i == 0, 0.0, answer) for i, (_, answer) in enumerate(continuations)]

    monkeypatch.setattr(retrieval, "score_after_prefix", fake_scoring)
    result = run(None, tok, [900], positions=[0, 0.5, 1], trials=2, progress=False)[900]
    assert asked == [3, 3]  # one shared record list per trial, asked at every position
    assert result["score"] == pytest.approx(100 / 3) and result["positions"] == {"0.0": 100.0, "0.5": 0.0, "1.0": 0.0}
    assert result["n"] == 6 and all(r["predicted"] == r["value"] for r in result["samples"] if r["correct"])


def test_entropy_of_known_distributions():
    # all logits equal → uniform over the visible keys: H = ln(n) exactly
    q = torch.zeros(1, 2, 6, 4)
    k = torch.randn(1, 1, 6, 4)
    h, n = row_entropy(q, k, torch.arange(6), scaling=1.0)
    assert torch.allclose(h, torch.log(torch.arange(1, 7).float()).expand(1, 2, 6), atol=1e-6)
    assert n[0, 0].tolist() == [1, 2, 3, 4, 5, 6]
    # one overwhelming key → H ≈ 0
    k = torch.zeros(1, 1, 6, 4)
    k[0, 0, 0] = 1.0
    q = torch.ones(1, 1, 6, 4) * 100
    h, _ = row_entropy(q, k, torch.arange(6), scaling=1.0)
    assert float(h.max()) < 1e-6


def test_chunked_entropy_equals_eager_attention_probabilities():
    model = tiny_model("llama", attn_implementation="eager")
    ids = torch.randint(3, 250, (1, 120))
    rows = probe_rows(120, 40)
    entropy, visible = document_entropy(model, ids[0].tolist(), rows, chunk=7)
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions  # [1, H, S, S] per layer, materialised
    for layer, probs in enumerate(attentions):
        p = probs[0][:, rows].double()
        direct = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
        assert torch.allclose(entropy[layer].double(), direct, atol=1e-4)
    assert visible.tolist() == (rows + 1).tolist()


def test_entropy_probe_sees_the_logit_scale():
    model = tiny_model("llama")
    scaled = ropekit.extend(tiny_model("llama"), "logscale", target_length=256, layers="all")
    ids = torch.randint(3, 250, (1, 200))[0].tolist()
    rows = probe_rows(200, 30)
    plain, _ = document_entropy(model, ids, rows)
    sharper, _ = document_entropy(scaled, ids, rows)
    late = rows >= 64  # beyond the native window t > 1, which lowers entropy
    assert float(sharper[0][:, late].mean()) < float(plain[0][:, late].mean())


def test_runner_caches_and_resumes(tmp_path, hay):
    tok = tiny_tokenizer()
    save_tiny_checkpoint(tmp_path / "m", vocab_size=len(tok))
    tasks = {"passkey": {"trials": 2}, "niah": {"depths": [0, 1], "haystack": hay}}
    first = evaluate([RunSpec(str(tmp_path / "m"))], tasks, [400, 500], tmp_path / "out", device="cpu", progress=False)
    cached = sorted((tmp_path / "out" / "cache").glob("*.json"))
    assert len([p for p in cached if not p.name.startswith("run-")]) == 4
    stamp = {p: p.stat().st_mtime_ns for p in cached}
    again = evaluate([RunSpec(str(tmp_path / "m"))], tasks, [400, 500, 700], tmp_path / "out", device="cpu", progress=False)
    assert all(p.stat().st_mtime_ns == stamp[p] for p in cached)  # nothing recomputed
    assert len([p for p in (tmp_path / "out" / "cache").glob("*.json") if not p.name.startswith("run-")]) == 6  # only the new length ran
    assert again["runs"][0]["results"]["niah"]["400"] == first["runs"][0]["results"]["niah"]["400"]
    third = evaluate([RunSpec(str(tmp_path / "m"))], tasks, [400], tmp_path / "out", device="cpu", progress=False)  # all cached
    assert third["runs"][0]["native_length"] == 64 and "record" in third["runs"][0]


def test_extended_checkpoint_evaluates_and_reports_end_to_end(tmp_path, hay):
    from typer.testing import CliRunner

    from ropekit.cli import app

    tok = tiny_tokenizer()
    save_tiny_checkpoint(tmp_path / "base", vocab_size=len(tok))
    runner = CliRunner()
    assert runner.invoke(app, ["extend", str(tmp_path / "base"), "-m", "eabf", "-t", "512", "-o", str(tmp_path / "ext")]).exit_code == 0
    result = runner.invoke(app, ["eval", str(tmp_path / "ext"), "--tasks", "passkey,niah,lines,kv,ppl,entropy", "--lengths", "800,1200",
                                 "--task-option", "passkey.trials=2", "--task-option", f'niah.haystack="{hay}"',
                                 "--task-option", "niah.depths=[0,0.5,1]", "--task-option", "lines.trials=1", "--task-option", "kv.trials=1",
                                 "--task-option", f'ppl.source="{hay}"', "--task-option", "ppl.tail=64", "--task-option", "ppl.windows=1",
                                 "--task-option", f'entropy.source="{hay}"', "--task-option", "entropy.queries=16",
                                 "--output", str(tmp_path / "results"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    run = results["runs"][0]
    assert run["record"]["method"] == "eabf" and set(run["results"]) == {"passkey", "niah", "lines", "kv", "ppl", "entropy"}
    assert math.isfinite(run["results"]["ppl"]["1200"]["score"])
    entropy = run["results"]["entropy"]["1200"]
    assert len(entropy["layers"]) == 4 and len(entropy["uniform"]) == len(entropy["positions"])
    result = runner.invoke(app, ["report", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "results" / "report.md").read_text()
    for section in ("## passkey", "## niah", "## lines", "## kv", "## ppl", "## entropy", "device:", "command:"):
        assert section in md
    page = (tmp_path / "results" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 7 and "<table>" in page
    plots = {p.name for p in (tmp_path / "results" / "plots").glob("*.png")}
    assert {"ppl_vs_length.png", "niah_ext.png", "kv_by_position.png", "entropy_ext.png"} <= plots


def test_report_errors(tmp_path):
    from ropekit.studies.report import render

    with pytest.raises(ropekit.RopekitError, match="no results.json"):
        render(tmp_path)
    (tmp_path / "results.json").write_text('{"format": 1}')
    with pytest.raises(ropekit.RopekitError, match="not a ropekit results file"):
        render(tmp_path)


def test_shared_prefix_scoring_uses_the_current_cache_keyword():
    """transformers 5.24 renamed the forward's KV-cache argument (``past_key_values`` → ``cache``, the old name
    removed in 5.40); scoring passes whichever the installed version takes, without a deprecation warning, and the
    shared-prefix logits still equal separate forwards."""
    import warnings

    from ropekit.eval.scoring import score_after_prefix, score_answers

    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok))
    prefix = list(range(3, 60))
    continuations = [([5, 6, 7], [8, 9]), ([10, 11], [12])]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        shared = score_after_prefix(model, prefix, continuations)
    separate = score_answers(model, [(prefix + q, a) for q, a in continuations])
    assert [s.predicted for s in shared] == [s.predicted for s in separate]
    assert all(abs(a.answer_nll - b.answer_nll) < 1e-4 for a, b in zip(shared, separate))
