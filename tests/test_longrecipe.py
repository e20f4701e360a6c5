"""LongRecipe: the sentence-gapped position sampler (invariants over ≥10⁴ draws, the composition's distribution, the
head-chunk option, coverage vs PoSE), sentence-end ids, row validation, data selection oracles, the 3-stage recipe."""

import json
import math
import random
import statistics

import pytest
import torch

import ropekit
from ropekit.training.data import Example
from ropekit.training.longrecipe import longrecipe_theta
from ropekit.training.positions import longrecipe_positions, position_ids, sample, sentence_end_ids
from ropekit.training.selection import (digit_keep, logit_change, rank_token_types, select, split_sentences, token_class)
from ropekit.testing import tiny_model, tiny_tokenizer
from ropekit.training.trainer import TrainingSet

DRAWS = 10_000
END = 7  # the sentence-end token of the synthetic documents below


def random_doc(n: int, generator: torch.Generator, mean_sentence: float = 12.0) -> torch.Tensor:
    """Tokens 8..99 with an end token (7) after geometric sentence lengths of the given mean; the last token is not an end."""
    doc = torch.randint(8, 100, (n,), generator=generator)
    ends = torch.rand(n, generator=generator) < 1.0 / mean_sentence
    doc[ends] = END
    doc[-1] = 8
    return doc


# ------------------------------------------------------------------------------------------------------------- sampler


def test_invariants_over_many_draws():
    n, target = 256, 2048
    generator = torch.Generator().manual_seed(1234)
    for _ in range(DRAWS):
        doc = random_doc(n + 50, generator)
        tokens, ids = sample("longrecipe", doc, n, target, generator, sentence_ends={END})
        assert torch.equal(tokens, doc[:n])
        assert int(ids[0]) == 0 and int(ids[-1]) == target - 1  # exactly the last id of the target
        steps = ids[1:] - ids[:-1]
        assert bool((steps >= 1).all())  # strictly increasing
        jumps = torch.nonzero(steps > 1).flatten()
        assert bool((tokens[jumps] == END).all())  # gaps only right after an end token
        # ids consecutive inside every sentence: a token that is not an end is always followed by id + 1
        assert bool((steps[tokens[:-1] != END] == 1).all())
        assert int((steps - 1).sum()) == target - n  # the gaps make up the whole difference


def test_gaps_are_a_uniform_composition():
    """Fixed document with K slots: each of the K parts of a uniform weak composition of G has mean G/K, and the
    first part has the exact marginal P(g) = C(G−g+K−2, K−2) / C(G+K−1, K−1) (chi-square over 10⁴ draws)."""
    n, target = 64, 160
    is_end = torch.zeros(n, dtype=torch.bool)
    is_end[[5, 17, 30, 44, 58]] = True  # K = 5 slots
    k, total = 5, target - n
    generator = torch.Generator().manual_seed(7)
    parts = []
    for _ in range(DRAWS):
        ids = longrecipe_positions(is_end, target, generator)
        steps = ids[1:] - ids[:-1] - 1
        parts.append(steps[[5, 17, 30, 44, 58]])
    parts = torch.stack(parts).double()
    assert bool((parts.sum(1) == total).all())
    sd = float(parts[:, 0].std())
    for j in range(k):  # every slot is alike: 4 standard errors
        assert abs(float(parts[:, j].mean()) - total / k) < 4 * sd / math.sqrt(DRAWS)
    exact = torch.tensor([math.comb(total - g + k - 2, k - 2) / math.comb(total + k - 1, k - 1) for g in range(total + 1)])
    assert abs(float(exact.sum()) - 1) < 1e-9
    observed = torch.bincount(parts[:, 0].long(), minlength=total + 1).double()
    expected = exact * DRAWS
    bins = expected > 5  # the usual chi-square condition; the tail is pooled
    chi2 = float((((observed[bins] - expected[bins]) ** 2) / expected[bins]).sum())
    tail_o, tail_e = float(observed[~bins].sum()), float(expected[~bins].sum())
    chi2 += (tail_o - tail_e) ** 2 / max(tail_e, 1e-9)
    dof = int(bins.sum())  # bins + 1 pooled tail - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)  # ≈ the 99.99th percentile of χ²(dof)


def test_head_chunk_option_is_contiguous_and_uniform():
    n, target = 128, 1024
    generator = torch.Generator().manual_seed(3)
    heads = []
    for _ in range(DRAWS):
        doc = random_doc(n, generator, mean_sentence=6.0)
        replay = torch.Generator()
        replay.set_state(generator.get_state())
        head = int(torch.randint(1, n // 2 + 1, (1,), generator=replay))  # the sampler's first draw
        heads.append(head)
        tokens, ids = sample("longrecipe", doc, n, target, generator, sentence_ends=[END], head_chunk=True)
        assert torch.equal(ids[:head], torch.arange(head))  # no gap inside the head, even after its end tokens
        jumps = torch.nonzero(ids[1:] - ids[:-1] > 1).flatten()
        assert all(j == head - 1 or (j >= head and int(tokens[j]) == END) for j in jumps.tolist())
        assert int(ids[-1]) == target - 1
    # h ~ U{1..N/2}: mean (N/2 + 1)/2, 4 standard errors
    assert abs(statistics.mean(heads) - (n // 2 + 1) / 2) < 4 * statistics.pstdev(heads) / math.sqrt(DRAWS)
    assert min(heads) == 1 and max(heads) == n // 2


def test_sentence_ends_accept_any_iterable_and_no_end_stays_contiguous():
    doc = torch.tensor([9, 9, 7, 9, 9, 7, 9, 9])
    results = [sample("longrecipe", doc, 8, 40, torch.Generator().manual_seed(0), sentence_ends=ends)[1]
               for ends in ({7}, [7], (7,), frozenset({7}), torch.tensor([7]))]
    assert all(torch.equal(r, results[0]) for r in results) and int(results[0][-1]) == 39
    _, ids = sample("longrecipe", doc, 8, 40, torch.Generator(), sentence_ends={5})
    assert torch.equal(ids, torch.arange(8))  # no end before the last token: nowhere to put a gap


def covered_fraction(ids: torch.Tensor, target: int) -> float:
    """Mean over samples of the fraction of distances 1..target−1 that occur as some p_i − p_j (autocorrelation by FFT)."""
    x = torch.zeros(ids.shape[0], 2 * target, dtype=torch.float64)
    x.scatter_(1, ids, 1.0)
    spectrum = torch.fft.rfft(x, dim=1)
    auto = torch.fft.irfft(spectrum * spectrum.conj(), n=2 * target, dim=1)[:, 1:target]
    return float((auto > 0.5).double().mean())


def test_distance_coverage_against_pose_is_reported(capsys):
    """Reported, not asserted (the paper, Fig. 3: LongRecipe's distances are about 2× PoSE's): the covered share of
    1..L−1 over 10³ samples at the same budget (N = 30% of L), for short (6-token) and prose-like (25-token) sentences."""
    target, count = 4096, 1000
    n = round(0.3 * target)
    generator = torch.Generator().manual_seed(11)
    pose = torch.stack([position_ids("pose", n, target, generator) for _ in range(count)])
    lines = [f"distance coverage at N={n}, L={target}, {count} samples: pose {covered_fraction(pose, target):.3f}"]
    for mean_sentence in (6.0, 25.0):
        ids = torch.stack([sample("longrecipe", random_doc(n, generator, mean_sentence), n, target, generator, sentence_ends={END})[1]
                           for _ in range(count)])
        lines.append(f"longrecipe (mean sentence {mean_sentence:g} tokens) {covered_fraction(ids, target):.3f}")
    with capsys.disabled():
        print("\n" + "; ".join(lines))
    # the oracle of the measurement itself: contiguous ids cover exactly 1..N−1
    assert covered_fraction(torch.arange(n)[None], target) == pytest.approx((n - 1) / (target - 1))


def test_position_ids_without_a_document_is_one_line():
    with pytest.raises(ropekit.RopekitError, match="needs the document and its sentence ends"):
        position_ids("longrecipe", 256, 2048)
    with pytest.raises(ropekit.RopekitError, match="at least 256 tokens"):
        sample("longrecipe", torch.arange(100), 256, 2048, torch.Generator(), sentence_ends={7})


def test_paper_rope_bases_are_reproduced():
    """App. A Tab. 4 "RoPE scaling (Dynamic NTK)": Llama-3 48.9M (80k, factor 10), 131.5M (128k, 16); Qwen2 13.5M (4)."""
    assert longrecipe_theta(5e5, 128, 10) / 1e6 == pytest.approx(48.9, abs=0.05)
    assert longrecipe_theta(5e5, 128, 16) / 1e6 == pytest.approx(131.5, abs=0.05)
    assert longrecipe_theta(1e6, 128, 4) / 1e6 == pytest.approx(13.5, abs=0.05)


# ---------------------------------------------------------------------------------------------------- sentence ends


def test_sentence_end_ids_of_the_byte_tokenizer():
    assert sentence_end_ids(tiny_tokenizer()) == frozenset({ord("."), ord("!"), ord("?"), ord("\n")})


def _check_end_ids(tokenizer, ends):
    special = set(tokenizer.all_special_ids)
    assert not ends & special
    for i in range(len(tokenizer)):
        if i in special:
            continue
        text = tokenizer.decode([i]).rstrip(" \t")
        assert (i in ends) == text.endswith((".", "!", "?", "\n")), (i, text)
    for text in ("Hello world.", "Really?", "Stop!", "one line\n"):
        assert tokenizer(text, add_special_tokens=False).input_ids[-1] in ends
    assert tokenizer(" the", add_special_tokens=False).input_ids[-1] not in ends


@pytest.mark.slow
def test_sentence_end_ids_of_smollm2():
    from transformers import AutoTokenizer

    from ropekit.models import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    _check_end_ids(tokenizer, sentence_end_ids(tokenizer))


@pytest.mark.parametrize("name,known", [("meta-llama/Meta-Llama-3-8B", {13, 198, 30, 0, 627}), ("Qwen/Qwen2-7B", {13, 198, 30, 0})])
def test_sentence_end_ids_of_llama3_and_qwen2(name, known):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:
        pytest.skip(f"{name} tokenizer not available offline")
    ends = sentence_end_ids(tokenizer)
    assert known <= ends  # the reference code's hard-coded Llama-3 ids are found, not listed
    _check_end_ids(tokenizer, ends)


# ------------------------------------------------------------------------------------------------------ training rows


def test_training_set_passes_per_row_sentence_ends():
    tokenizer = tiny_tokenizer()
    text = " ".join(f"Sentence number {i} ends here." for i in range(40))
    row = Example(tokenizer(text).input_ids, tokenizer(text).input_ids, where="doc.txt")
    dataset = TrainingSet([row, row], "longrecipe", 300, 3000, seed=0, sentence_ends=sentence_end_ids(tokenizer))
    for epoch in range(2):
        dataset.set_epoch(epoch)
        item = dataset[1]
        assert torch.equal(item["input_ids"], torch.tensor(row.input_ids[:300])) and item["jumps"]
        ids = item["position_ids"]
        assert int(ids[0]) == 0 and int(ids[-1]) == 2999
        jumps = torch.nonzero(ids[1:] - ids[:-1] > 1).flatten()
        assert jumps.numel() > 0 and all(row.input_ids[j] == ord(".") for j in jumps.tolist())
    assert not torch.equal(dataset[0]["position_ids"], dataset[1]["position_ids"])  # fresh per index


@pytest.mark.parametrize("text,expected", [("short.", "doc.txt: 6 tokens, shorter than the longrecipe training length 64"),
                                           ("x" * 100, "doc.txt: no sentence end")])
def test_bad_rows_stop_before_training(text, expected):
    tokenizer = tiny_tokenizer()
    good = Example(list(b"A sentence. " * 20), list(b"A sentence. " * 20), where="good.txt")
    bad = Example(tokenizer(text).input_ids, tokenizer(text).input_ids, where="doc.txt")
    with pytest.raises(ropekit.RopekitError, match=expected):
        TrainingSet([good, bad], "longrecipe", 64, 512, sentence_ends=sentence_end_ids(tokenizer))
    with pytest.raises(ropekit.RopekitError, match="needs the tokenizer's sentence-end ids"):
        TrainingSet([good], "longrecipe", 64, 512)


# --------------------------------------------------------------------------------------------------------- selection


def digit_document(count: int = 420, every: int = 7) -> tuple[str, list[bool]]:
    sentences, has_digit = [], []
    for i in range(count):
        digit = i % every == 3
        sentences.append(f"Record {i * 13 % 97} holds a value." if digit else f"Plain words only, sentence {'abcdefg'[i % 7]}.")
        has_digit.append(digit)
    return " ".join(sentences), has_digit


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_digit_rule_keeps_every_digit_sentence_and_a_binomial_share_of_the_rest(p):
    tokenizer = tiny_tokenizer()
    text, has_digit = digit_document()
    sentences = split_sentences(tokenizer, text, sentence_end_ids(tokenizer))
    assert "".join(sentences.texts) == text and len(sentences.texts) == len(has_digit)
    assert [any(c.isdigit() for c in s) for s in sentences.texts] == has_digit
    keep = digit_keep(sentences, p, random.Random(f"test-{p}"))
    assert all(k for k, d in zip(keep, has_digit) if d)  # every digit sentence
    others = [k for k, d in zip(keep, has_digit) if not d]
    m = len(others)
    # 4 binomial standard deviations: at m = 360 this excludes every other p in {0.2, 0.5, 0.8} (and 0 and 1)
    assert abs(sum(others) - m * p) < 4 * math.sqrt(m * p * (1 - p))


def test_select_fills_rows_to_the_budget(tmp_path):
    from ropekit.training.data import load_data

    tokenizer = tiny_tokenizer()
    text, _ = digit_document(2000)
    source = tmp_path / "doc.txt"
    source.write_text(text)
    rows, report = select(str(source), tokenizer, 600, p=0.5, output=tmp_path / "rows.jsonl", progress=False)
    assert len(rows) >= 3 and report.rows == len(rows) and report.digit_sentences == 2000 // 7 + (2000 % 7 > 3)
    examples, _ = load_data(tmp_path / "rows.jsonl", tokenizer)  # what `ropekit train --data` reads
    assert len(examples) == len(rows)
    for example in examples:
        assert 600 <= len(example) < 600 + 60  # at least the budget, at most one sentence more
    kept = "".join(rows)
    assert all(s in kept for s in text.split(". ") if s.startswith("Record"))  # digit sentences of the used text
    more, _ = select(str(source), tokenizer, 600, p=0.5, rows=2 * len(rows), progress=False)  # fresh draws per pass
    assert len(more) == 2 * len(rows) and len(set(more)) == len(more)


def test_select_refuses_bad_arguments(tmp_path):
    tokenizer = tiny_tokenizer()
    with pytest.raises(ropekit.RopekitError, match=r"p = 1.5 is outside \[0, 1\]"):
        select("shakespeare", tokenizer, 100, p=1.5)
    with pytest.raises(ropekit.RopekitError, match="unknown selection rule"):
        select("shakespeare", tokenizer, 100, rule="verbs")
    from ropekit.training.selection import select_command

    with pytest.raises(ropekit.RopekitError, match="row budget 40000 is longer than the target 32768"):
        select_command(tmp_path / "x.jsonl", train_length="40000", target_length="32k")
    with pytest.raises(ropekit.RopekitError, match="needs the extended model"):
        select_command(tmp_path / "x.jsonl", rule="logit-change")


def test_token_classes():
    assert [token_class(t) for t in (" 42", "7", ".", " ,", "\n", " the", "And", " dog")] == [
        "digits", "digits", "punctuation", "punctuation", "other", "function words", "function words", "other"]


def bumped_pair(token: int):
    """Two tiny models with untied embeddings, identical but for the output row of ``token``: its entry 0 is raised.
    Every embedding has a large constant in dimension 0, so the final hidden state's dimension 0 is positive at every
    position and the change raises that token's logit everywhere (checked)."""
    original = tiny_model("llama", seed=1)
    with torch.no_grad():
        original.model.embed_tokens.weight[:, 0] = 30.0
    extended = tiny_model("llama", seed=1)
    extended.load_state_dict(original.state_dict())
    with torch.no_grad():
        extended.lm_head.weight[token, 0] += 2.0
    return original, extended


def test_logit_change_ranks_the_raised_token_first():
    tokenizer = tiny_tokenizer()
    token = ord("e")
    original, extended = bumped_pair(token)
    ids = tokenizer("the three trees were green; here we see seven eels. " * 2).input_ids
    with torch.no_grad():
        hidden = original.get_decoder()(input_ids=torch.tensor([ids[:48]])).last_hidden_state[0]
    assert bool((hidden[:, 0] > 0).all())  # the precondition of the oracle
    scores = logit_change(original, extended, ids, window=48)
    finite = ~torch.isnan(scores)
    is_token = torch.tensor(ids) == token
    assert torch.equal(scores[finite] > 0, is_token[finite])  # only the raised token gains, and it gains everywhere
    assert rank_token_types(ids, scores)[0][0] == token


def test_logit_change_selection_writes_class_report(tmp_path):
    tokenizer = tiny_tokenizer()
    original, extended = bumped_pair(ord("7"))
    text = " ".join(f"Item {i} is {'seven 7' if i % 3 == 0 else 'plain'} text here." for i in range(60))
    (tmp_path / "doc.txt").write_text(text)
    rows, report = select(str(tmp_path / "doc.txt"), tokenizer, 100, rule="logit-change", original=original, extended=extended,
                          top=0.01, window=256, output=tmp_path / "sel.jsonl", progress=False)
    classes = json.loads((tmp_path / "sel.token-classes.json").read_text())
    assert (tmp_path / "sel.token-classes.png").stat().st_size > 1000
    assert classes["classes"]["digits"]["top_share"] == 1.0 > classes["classes"]["digits"]["all_share"]  # the top 1%: "7" only
    assert classes["top_types"][0]["token"] == "7" and report.token_classes == classes
    assert rows and all("7" in row for row in rows)  # sentences holding a top-ranked occurrence


# ------------------------------------------------------------------------------------------------------------ recipe


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from ropekit.testing import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("longrecipe")
    save_tiny_checkpoint(root / "model", vocab_size=len(tiny_tokenizer()))
    text, _ = digit_document(600)
    (root / "doc.jsonl").write_text("".join(json.dumps({"text": text[i * 3000:(i + 1) * 3000 + 400]}) + "\n" for i in range(4)))
    rows = [{"messages": [{"role": "user", "content": f"Remember {1000 + 37 * i}. " + "Filler text. " * 6 + "Which?"},
                          {"role": "assistant", "content": f"{1000 + 37 * i}."}]} for i in range(8)]
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def recipe_options(workspace, out, **kw):
    from ropekit.training.api import TrainOptions

    base = dict(model=str(workspace / "model"), target_length=512, output=str(out), recipe="longrecipe", data=str(workspace / "doc.jsonl"),
                replay_data=str(workspace / "chat.jsonl"), device="cpu", progress=False, learning_rate=2e-3, batch_size=2, max_steps=2,
                save_steps=1, check=False)
    return TrainOptions(**{**base, **kw})


def test_recipe_runs_three_stages_and_merges(workspace, tmp_path):
    from safetensors.torch import load_file

    from ropekit.training.api import train

    out = tmp_path / "lr"
    summary = train(recipe_options(workspace, out))
    s0 = json.loads((out / "stage0" / "training_summary.json").read_text())
    s1 = json.loads((out / "stage1" / "training_summary.json").read_text())
    assert s0["strategy"] == "longrecipe" and s0["train_length"] == round(0.3 * 512) and s0["method"] == "abf"
    assert s0["overrides"]["method_params"]["theta"] == pytest.approx(longrecipe_theta(10000.0, 16, 512 / 64))
    assert s1["strategy"] == "contiguous" and s1["train_length"] == 64 and s1["method"] == "abf"  # native length, extension kept
    log0 = [json.loads(x) for x in open(out / "stage0" / "training_log.jsonl")]
    log1 = [json.loads(x) for x in open(out / "stage1" / "training_log.jsonl")]
    assert log1[0]["learning_rate"] == pytest.approx(log0[0]["learning_rate"] / 10)
    # replay steps: the paper's 68/240 of stage 0's tokens at the native length
    assert s1["steps"] == math.ceil(68 / 240 * 2 * s0["train_length"] / 64) == summary["replay_steps"]
    merged, replayed = load_file(out / "model.safetensors"), load_file(out / "stage1" / "model.safetensors")
    original = load_file(workspace / "model" / "model.safetensors")
    for name, tensor in merged.items():
        assert torch.equal(tensor, (0.5 * replayed[name].float() + 0.5 * original[name].float()).to(replayed[name].dtype))
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["rope_theta"] == pytest.approx(s0["overrides"]["method_params"]["theta"])
    model, tokenizer = ropekit.load_model(out, device="cpu")
    assert model.config.ropekit["method"] == "abf" and tokenizer is not None
    with torch.no_grad():
        assert bool(torch.isfinite(model(torch.tensor([tokenizer("Hello there.").input_ids])).logits).all())


def test_recipe_resumes_the_interrupted_stage(workspace, tmp_path):
    from transformers import TrainerCallback

    from ropekit.training.api import train

    class StopInReplay(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if args.output_dir.endswith("stage1") and state.global_step == 1:
                raise KeyboardInterrupt

    out = tmp_path / "lr"
    with pytest.raises(KeyboardInterrupt):
        train(recipe_options(workspace, out, replay_steps=3), callbacks=[StopInReplay()])
    assert (out / "stage0" / "training_summary.json").exists() and (out / "stage1" / "checkpoint-1").is_dir()
    assert not (out / "model.safetensors").exists()
    stamp = (out / "stage0" / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(ropekit.RopekitError, match="not empty"):
        train(recipe_options(workspace, out, replay_steps=3))
    summary = train(recipe_options(workspace, out, replay_steps=3, resume=True))
    assert (out / "stage0" / "model.safetensors").stat().st_mtime_ns == stamp  # stage 0 skipped
    steps = [json.loads(x)["step"] for x in open(out / "stage1" / "training_log.jsonl")]
    assert steps == [1, 2, 3] and summary["replay_steps"] == 3  # resumed at step 2, not restarted
    assert (out / "model.safetensors").exists()


@pytest.mark.parametrize("change,expected", [
    ({"train_length": 600}, "budget 600 is longer than the target 512"),
    ({"merge_weight": 1.5}, r"merge weight 1.5 is outside \[0, 1\]"),
    ({"model": "nowhere/model.gguf"}, "no such model file"),
    ({"model": "some-org/some-model"}, "not a local directory"),
    ({"resume": True}, "holds no LongRecipe stage"),
])
def test_recipe_bad_inputs(workspace, tmp_path, change, expected):
    from ropekit.training.api import train

    with pytest.raises(ropekit.RopekitError, match=expected):
        train(recipe_options(workspace, tmp_path / "out", **change))


def test_recipe_resume_with_a_missing_stage_checkpoint(workspace, tmp_path):
    from ropekit.training.api import train

    stage0 = tmp_path / "out" / "stage0"
    stage0.mkdir(parents=True)
    (stage0 / "training_summary.json").write_text("{}")
    with pytest.raises(ropekit.RopekitError, match="stage0 finished .* but its model checkpoint is missing"):
        train(recipe_options(workspace, tmp_path / "out", resume=True))


def test_train_stops_on_a_bad_row_before_any_step(workspace, tmp_path):
    from ropekit.training.api import TrainOptions, train

    text, _ = digit_document(100)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": text}) + "\n" + json.dumps({"text": "x" * 400}) + "\n")
    with pytest.raises(ropekit.RopekitError, match="bad.jsonl line 2: no sentence end"):
        train(TrainOptions(model=str(workspace / "model"), target_length=512, output=str(tmp_path / "run"), recipe="cream-paper",
                           strategy="longrecipe", data=str(tmp_path / "bad.jsonl"), train_length=128, device="cpu", progress=False))
    assert not (tmp_path / "run" / "training_log.jsonl").exists()


def test_cli_data_select_and_bad_p(tmp_path):
    from typer.testing import CliRunner

    from ropekit.cli import app

    text, _ = digit_document(1000)
    (tmp_path / "doc.txt").write_text(text)
    model = tmp_path / "model"
    from ropekit.testing import save_tiny_checkpoint

    save_tiny_checkpoint(model, vocab_size=len(tiny_tokenizer()))
    runner = CliRunner()
    result = runner.invoke(app, ["data", "select", "--data", str(tmp_path / "doc.txt"), "--model", str(model), "-t", "2k",
                                 "-o", str(tmp_path / "rows.jsonl")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "rows.report.json").read_text())
    assert report["budget"] == round(0.3 * 2048) and report["rows"] >= 2
    again = runner.invoke(app, ["data", "select", "--data", str(tmp_path / "doc.txt"), "--model", str(model), "-o", str(tmp_path / "rows.jsonl")])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = runner.invoke(app, ["data", "select", "--model", str(model), "--p", "-0.1", "-o", str(tmp_path / "x.jsonl")])
    assert bad.exit_code == 2 and "outside [0, 1]" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("command", [["merge"], ["data"], ["data", "select"]])
def test_help(command):
    from typer.testing import CliRunner

    from ropekit.cli import app

    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


@pytest.mark.parametrize("preset", ["smollm2-cpu-smoke", "smollm2-64k"])
def test_study_rows_match_the_pose_budget(preset):
    """Every PoSE row of a study preset has a longrecipe twin: same method, target, train length, steps and samples."""
    from ropekit.studies.study import get_preset

    runs = {r.label: r for r in get_preset(preset).runs}
    twins = [(r, runs.get(r.label.replace("pose-", "longrecipe-"))) for r in runs.values() if r.strategy == "pose"]
    assert twins and all(twin is not None for _, twin in twins)
    for pose, twin in twins:
        assert (twin.recipe, twin.strategy, twin.method, twin.target) == ("longrecipe", "longrecipe", pose.method, pose.target)
        for key in ("max_steps", "samples", "batch_size", "warmup_steps"):
            assert twin.options[key] == pose.options[key]
        # PoSE trains at the recipe's native length (8K for SmolLM2) unless the row says otherwise
        assert twin.options["train_length"] == pose.options.get("train_length", "8k")


@pytest.mark.slow
def test_logit_change_selection_on_smollm2(tmp_path):
    """The paper's analysis on the embedded model on CPU: SmolLM2 against its YaRN ×4 extension, digit-rich synthetic
    conversations, 512-token windows; rows, class report and chart come out, every row holds the budget."""
    from ropekit.training.data import load_data

    original, tokenizer = ropekit.load_model("smollm2-135m", device="cpu", dtype="float32")
    extended, _ = ropekit.load_model("smollm2-135m", device="cpu", dtype="float32")
    ropekit.extend(extended, "yarn", target_length="32k")
    rows, report = select("synthetic", tokenizer, 256, rule="logit-change", original=original, extended=extended, rows=2,
                          window=512, output=tmp_path / "sel.jsonl", progress=False)
    classes = report.token_classes
    assert classes["top_tokens"] == math.ceil(0.2 * classes["scored_tokens"])
    assert sum(c["top"] for c in classes["classes"].values()) == classes["top_tokens"]
    assert (tmp_path / "sel.token-classes.png").exists()
    examples, _ = load_data(tmp_path / "sel.jsonl", tokenizer)
    assert rows and all(len(e) >= 256 for e in examples)
