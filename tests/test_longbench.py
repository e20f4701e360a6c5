"""LongBench v1 task: official metrics on hand-made cases, middle truncation, official prompts, the run end to end."""

import json

import pytest

from ropekit.errors import RopekitError
from ropekit.eval import longbench as lb
from ropekit.eval.tasks import TASKS, check_options
from ropekit.testing import tiny_model, tiny_tokenizer

TREC_CLASSES = ["Location", "Entity", "Abbreviation", "Description", "Human being", "Numeric value"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model("llama", vocab_size=len(tok))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def make_data(folder):
    """Two tiny datasets: triviaqa (few-shot, no chat template, first-line rule) and passage_count (chat template)."""
    trivia = [{"input": f"Passage: Paris is in France.\nQuestion: Where is Paris {i}?\nAnswer:",
               "context": "Passage: Rome is in Italy.\nQuestion: Where is Rome?\nAnswer: Italy\n\n" * (2 + i),
               "answers": ["France", "French Republic"], "all_classes": None, "length": 20, "dataset": "triviaqa",
               "language": "en", "_id": f"tqa-{i}"} for i in range(2)]
    count = [{"input": "", "context": "Paragraph 1: The sky is blue.\n\nParagraph 2: The sky is blue.\n\n" * 3,
              "answers": ["1"], "all_classes": None, "length": 30, "dataset": "passage_count", "language": "en", "_id": "pc-0"}]
    write_jsonl(folder / "triviaqa.jsonl", trivia)
    write_jsonl(folder / "passage_count.jsonl", count)
    return folder


# ---- (1) metrics ---------------------------------------------------------------------------------------------------

def test_qa_f1():
    assert lb.qa_f1_score("Paris.", "paris") == 1.0  # punctuation and case removed
    assert lb.qa_f1_score("The Eiffel Tower", "a eiffel tower") == 1.0  # articles removed
    assert lb.qa_f1_score("London", "Paris") == 0.0
    # "cat sat on mat" vs "cat on mat": 3 common, P = 3/4, R = 1, F1 = 2·(3/4)/(7/4) = 6/7
    assert lb.qa_f1_score("The cat sat on the mat", "cat on a mat") == pytest.approx(6 / 7)
    assert lb.normalize_answer("  The  Cat, an  apple! ") == "cat apple"


def test_rouge_l():
    assert lb.rouge_score("the cat sat", "the cat sat") == pytest.approx(1.0, abs=1e-7)  # 2PR/(P+R+1e-8)
    assert lb.rouge_score("dog", "cat") == 0.0
    assert lb.rouge_score("", "cat") == 0.0 and lb.rouge_score("...", "cat") == 0.0  # rouge raises, LongBench gives 0
    # LCS of "a b c d" and "a x c d e" is "a c d": P = 3/4, R = 3/5, F = 2PR/(P+R) = 2/3
    assert lb.rouge_score("a b c d", "a x c d e") == pytest.approx(2 / 3, abs=1e-7)
    # summary level: the union of the LCS words over hypothesis sentences, "a b" ∪ "c" = 3 of 3 reference words
    assert lb.rouge_score("a b. c", "a b c") == pytest.approx(1.0, abs=1e-7)
    # words are distinct (the package's exclusive=True): "a a a" has one word; case is kept
    assert lb.rouge_score("a a a", "a") == pytest.approx(1.0, abs=1e-7)
    assert lb.rouge_score("A", "a") == 0.0


def test_classification_retrieval_count_code():
    assert lb.classification_score("Location", "Location", all_classes=TREC_CLASSES) == 1.0
    assert lb.classification_score("Entity", "Location", all_classes=TREC_CLASSES) == 0.0
    assert lb.classification_score("Location or Entity", "Location", all_classes=TREC_CLASSES) == 0.5
    # "Human" is inside "Human being": dropped when the answer is "Human being"
    assert lb.classification_score("Human being", "Human being", all_classes=TREC_CLASSES + ["Human"]) == 1.0
    assert lb.retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    assert lb.retrieval_score("Paragraph 3 or 5", "Paragraph 3") == 0.5
    assert lb.retrieval_score("no idea", "Paragraph 3") == 0.0
    assert lb.count_score("There are 7", "7") == 1.0
    assert lb.count_score("7 or 8", "7") == 0.5
    assert lb.count_score("17", "7") == 0.0
    assert lb.code_sim_score("x = 1", "x = 1") == 1.0
    assert lb.code_sim_score("\n# set x\nx = 1\ny = 2", "x = 1") == 1.0  # first non-comment line
    assert lb.code_sim_score("abcd", "abxy") == 0.5  # difflib: 2 matching chars of 8 → ratio 0.5
    assert lb.code_sim_score("```", "x = 1") == 0.0  # no usable line → "" → 0


def test_first_line_rule_and_max_over_answers():
    # trec: only "Location" is scored, not the second line
    assert lb.score_sample("trec", "Location\nEntity", ["Location"], TREC_CLASSES) == 1.0
    assert lb.classification_score("Location\nEntity", "Location", all_classes=TREC_CLASSES) == 0.5
    # samsum: leading newlines stripped, then the first line
    assert lb.score_sample("samsum", "\n\nJohn is late\nMary: fine", ["John is late"]) == pytest.approx(1.0, abs=1e-7)
    assert lb.rouge_score("\n\nJohn is late\nMary: fine", "John is late") < 0.9
    # narrativeqa has no such rule: "foo paris" vs "paris" → F1 = 2/3
    assert lb.score_sample("narrativeqa", "\nfoo\nParis", ["Paris"]) == pytest.approx(2 / 3)
    assert lb.score_sample("narrativeqa", "Paris", ["London", "Paris"]) == 1.0  # max over answers
    assert lb.dataset_score([1.0, 0.0, 0.5]) == 50.0
    assert lb.dataset_score([1 / 3]) == 33.33


# ---- (2) truncation, (3) prompts -----------------------------------------------------------------------------------

def test_truncate_middle_keeps_first_and_last_halves():
    ids = list(range(10))
    assert lb.truncate_middle(ids, 6) == [0, 1, 2, 7, 8, 9]
    assert lb.truncate_middle(ids, 7) == [0, 1, 2, 7, 8, 9]  # int(7 / 2) = 3 per side, as pred.py
    assert lb.truncate_middle(ids, 10) == ids


def test_build_context_truncates_in_the_middle(tok):
    prompt = "A" * 50 + "B" * 100 + "C" * 50  # one token per byte
    ids, truncated = lb.build_context(tok, prompt, 100, chat=False)
    assert truncated and tok.decode(ids) == "A" * 50 + "C" * 50
    ids, truncated = lb.build_context(tok, "short", 100, chat=False)
    assert not truncated and tok.decode(ids) == "short"
    ids, truncated = lb.build_context(tok, prompt, 100, chat=True)  # the template's tokens count against the budget
    text = tok.decode(ids)
    assert truncated and len(ids) <= 100 and text.startswith("<|user|>" + "A" * 30) and text.endswith("C" * 30 + "</s><|assistant|>")
    template = tok.apply_chat_template([{"role": "user", "content": ""}], tokenize=False, add_generation_prompt=True)
    half = (100 - len(tok(template, add_special_tokens=False).input_ids)) // 2
    assert text == "<|user|>" + "A" * half + "C" * half + "</s><|assistant|>"


def test_prompts_are_the_official_templates():
    row = {"context": "Once upon a time.", "input": "Who?", "answers": ["x"]}
    prompt = lb.build_prompt("narrativeqa", row)
    assert prompt.startswith("You are given a story, which can be either a novel or a movie script, and a question.")
    assert "\n\nStory: Once upon a time.\n\nNow, answer the question based on the story" in prompt
    assert prompt.endswith("Question: Who?\n\nAnswer:")
    assert lb.build_prompt("lcc", {"context": "def f():\n", "input": ""}) == "Please complete the code given below. \ndef f():\nNext line of code:\n"
    assert set(lb.DATASET2PROMPT) == set(lb.DATASET2MAXLEN) == set(lb.DATASET2METRIC) == set(lb.ENGLISH)
    assert len(lb.ENGLISH) == 16
    assert (lb.DATASET2MAXLEN["narrativeqa"], lb.DATASET2MAXLEN["gov_report"], lb.DATASET2MAXLEN["samsum"]) == (128, 512, 128)
    assert lb.NO_CHAT_TEMPLATE == ("trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p")


# ---- (4) end to end ------------------------------------------------------------------------------------------------

def test_run_end_to_end_schema_and_determinism(tmp_path, model, tok):
    folder = make_data(tmp_path)
    task = TASKS["longbench"]
    assert task.kind == "dataset" and task.higher_is_better
    options = check_options(task, {"data_dir": str(folder)})
    out = task.run(model, tok, [128, 192], progress=False, **options)
    assert sorted(out) == [128, 192]
    for length, res in out.items():
        assert set(res) >= {"score", "n", "datasets", "samples"}
        assert set(res["datasets"]) == {"triviaqa", "passage_count"}  # default: English files present in data_dir
        assert res["n"] == 3 == len(res["samples"])
        assert res["datasets"]["triviaqa"]["n"] == 2 and res["datasets"]["passage_count"]["n"] == 1
        assert 0.0 <= res["score"] <= 100.0
        assert res["score"] == pytest.approx(sum(d["score"] for d in res["datasets"].values()) / 2, abs=0.01)
        for row in res["samples"]:
            assert set(row) >= {"dataset", "_id", "prediction", "answers", "score"}
            assert isinstance(row["prediction"], str) and 0.0 <= row["score"] <= 100.0
            assert row["prompt_tokens"] <= length - lb.DATASET2MAXLEN[row["dataset"]]
        assert any(row["truncated"] for row in res["samples"])
    json.dumps(out)  # JSON-able
    again = task.run(model, tok, [128], progress=False, **options)
    assert again[128] == out[128]


def test_run_options(tmp_path, model, tok):
    folder = make_data(tmp_path)
    out = lb._run(model, tok, [128], progress=False, data_dir=folder, datasets="triviaqa", max_samples=1, chat=False, batch_size=2)
    res = out[128]
    assert list(res["datasets"]) == ["triviaqa"] and res["n"] == 1
    assert [row["_id"] for row in res["samples"]] == ["tqa-0"]  # the first N rows, in order


# ---- (5) errors ----------------------------------------------------------------------------------------------------

def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message and "Fix:" in message
    return message


def test_errors(tmp_path, tok):
    with pytest.raises(RopekitError) as err:
        lb._run(None, tok, [1000], progress=False)
    assert "data_dir" in one_line(err)
    with pytest.raises(RopekitError) as err:
        lb._run(None, tok, [1000], progress=False, data_dir=tmp_path / "nope")
    assert "nope" in one_line(err)
    with pytest.raises(RopekitError) as err:
        lb._run(None, tok, [1000], progress=False, data_dir=tmp_path)  # no files at all
    assert "narrativeqa.jsonl" in one_line(err)
    make_data(tmp_path)
    with pytest.raises(RopekitError) as err:
        lb._run(None, tok, [1000], progress=False, data_dir=tmp_path, datasets=["triviaqa", "narrativeqa"])
    assert "narrativeqa.jsonl" in one_line(err) and "does not exist" in str(err.value)
    with pytest.raises(RopekitError) as err:
        lb._run(None, tok, [1000], progress=False, data_dir=tmp_path, datasets=["lsht"])
    assert "Chinese" in one_line(err) and "jieba" in str(err.value)
    with pytest.raises(RopekitError) as err:
        lb._run(None, tok, [1000], progress=False, data_dir=tmp_path, datasets=["nqa"])
    assert "unknown LongBench dataset" in one_line(err)
    with pytest.raises(RopekitError) as err:
        lb._run(None, tok, [40], progress=False, data_dir=tmp_path, datasets=["triviaqa"])  # 40 - 32 leaves too little
    assert "length 40" in one_line(err)


def test_malformed_rows_name_file_and_line(tmp_path, tok):
    good = {"input": "q", "context": "c", "answers": ["a"], "_id": "0"}
    path = tmp_path / "hotpotqa.jsonl"
    path.write_text(json.dumps(good) + "\n" + '{"input": "q", "context": \n', encoding="utf-8")
    with pytest.raises(RopekitError) as err:
        lb._run(None, tok, [1000], progress=False, data_dir=tmp_path)
    assert "hotpotqa.jsonl, line 2" in one_line(err) and "not valid JSON" in str(err.value)
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({"input": "q", "context": "c"}) + "\n", encoding="utf-8")
    with pytest.raises(RopekitError) as err:
        lb._run(None, tok, [1000], progress=False, data_dir=tmp_path)
    assert "hotpotqa.jsonl, line 3" in one_line(err) and "answers" in str(err.value)
    # max_samples stops reading before the bad line
    rows = lb.load_rows(path, "hotpotqa", max_samples=1)
    assert rows == [good]


def test_chat_template_choice(tok):
    assert lb._use_chat(tok, "passage_count", "auto") is True
    assert lb._use_chat(tok, "triviaqa", "auto") is False  # official no-template list
    assert lb._use_chat(tok, "passage_count", False) is False
    plain = tiny_tokenizer()
    plain.chat_template = None
    assert lb._use_chat(plain, "passage_count", "auto") is False
    with pytest.raises(RopekitError):
        lb._use_chat(plain, "passage_count", True)
