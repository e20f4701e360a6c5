"""Training data: response-only loss masks, EABF preparation, packing isolation, malformed rows, synthetic data."""

import json

import pytest
import torch

import ropekit
from ropekit.training.data import IGNORE, Example, load_data, pack, split_conversations, tokenize_conversation
from ropekit.testing import random_ids, tiny_model, tiny_tokenizer
from ropekit.training.trainer import TrainingSet, collate

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def labelled_text(tokenizer, example: Example) -> list[str]:
    """The decoded runs of labelled tokens."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


MULTI_TURN_OPENAI = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1?"},
                                  {"role": "assistant", "content": "A one."}, {"role": "user", "content": "Q2?"},
                                  {"role": "assistant", "content": "A two."}]}
MULTI_TURN_SHAREGPT = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Q1?"},
                                         {"from": "gpt", "value": "A one."}, {"from": "human", "value": "Q2?"},
                                         {"from": "gpt", "value": "A two."}]}


@pytest.mark.parametrize("template", [None, CHATML])
@pytest.mark.parametrize("row", [MULTI_TURN_OPENAI, MULTI_TURN_SHAREGPT], ids=["openai", "sharegpt"])
def test_loss_only_on_assistant_turns(tmp_path, template, row):
    tokenizer = tiny_tokenizer()
    if template:
        tokenizer.chat_template = template
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (example,), report = load_data(path, tokenizer)
    end = "</s>" if template is None else "<|im_end|>\n"
    assert labelled_text(tokenizer, example) == [f"A one.{end}", f"A two.{end}"]
    assert report.kind == "chat" and report.loss_tokens == sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in [f"A one.{end}", f"A two.{end}"])
    # the whole sequence is exactly the chat template's rendering
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(
        [{"role": m.get("role") or {"system": "system", "human": "user", "gpt": "assistant"}[m["from"]], "content": m.get("content") or m["value"]}
         for m in row.get("messages") or row["conversations"]], tokenize=False)


def test_split_at_turn_boundaries_keeps_masks():
    tokenizer = tiny_tokenizer()
    turns = []
    for i in range(6):
        turns += [{"role": "user", "content": f"question {i} " + "x" * 40}, {"role": "assistant", "content": f"answer {i}"}]
    example = tokenize_conversation(tokenizer, turns)
    pieces = split_conversations([example], min_tokens=10, max_tokens=150)
    assert all(len(p) <= 150 for p in pieces) and len(pieces) > 1
    assert sum(len(p) for p in pieces) == len(example)  # split, nothing lost
    for piece in pieces:  # each piece starts at a user turn
        assert tokenizer.decode(piece.input_ids).startswith("<|user|>")
    assert [t for p in pieces for t in labelled_text(tokenizer, p)] == [f"answer {i}</s>" for i in range(6)]
    assert split_conversations([example], min_tokens=len(example) + 1, max_tokens=150) == []  # under the minimum: dropped


def test_packed_rows_never_see_another_document():
    model = tiny_model("llama")
    docs = [Example(random_ids(n, seed=n)[0].tolist(), random_ids(n, seed=n)[0].tolist()) for n in (50, 30, 70)]
    (ids, labels, positions), = pack(docs, 160)
    assert positions == list(range(70)) + list(range(50)) + list(range(30))
    batch = collate([{"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions), "jumps": False}])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for doc in sorted(docs, key=len, reverse=True):
            alone = model(torch.tensor([doc.input_ids])).logits[0]
            assert torch.allclose(packed[start:start + len(doc)], alone, atol=1e-5)
            assert labels[start] == IGNORE  # never predicted across a document boundary
            start += len(doc)


def test_collate_keeps_position_jumps_inside_one_document():
    """CREAM ids jump inside a document; the all-ones mask stops transformers from splitting it into 'packed' pieces."""
    model = tiny_model("llama")
    rows = [Example(random_ids(400, seed=i)[0].tolist(), random_ids(400, seed=i)[0].tolist()) for i in range(2)]
    dataset = TrainingSet(rows, "cream", train_length=64, target_length=256, seed=0)
    batch = collate([dataset[0], dataset[1]])
    assert batch["attention_mask"].shape == (2, 64) and bool((batch["position_ids"][:, -1] == 255).all())
    with torch.no_grad():
        with_mask = model(**{k: batch[k] for k in ("input_ids", "position_ids", "attention_mask")}, use_cache=False).logits
        one = model(input_ids=batch["input_ids"][:1], position_ids=batch["position_ids"][:1], attention_mask=batch["attention_mask"][:1]).logits
        misread = model(input_ids=batch["input_ids"][:1], position_ids=batch["position_ids"][:1], use_cache=False).logits
    assert torch.allclose(with_mask[:1], one, atol=1e-5)
    assert not torch.allclose(misread, one, atol=1e-3)  # without the mask, the jumps would cut attention


def test_strategy_rows_are_fresh_each_epoch_and_labels_follow_tokens():
    doc = list(range(3, 1003))
    dataset = TrainingSet([Example(doc, [IGNORE] * 500 + doc[500:])], "cream", train_length=64, target_length=512, seed=1)
    first = dataset[0]
    again = dataset[0]
    dataset.set_epoch(1)
    later = dataset[0]
    assert torch.equal(first["position_ids"], again["position_ids"]) and not torch.equal(first["position_ids"], later["position_ids"])
    ids, labels = first["input_ids"], first["labels"]
    assert bool(((labels == ids) | (labels == IGNORE)).all()) and bool((labels[ids < 503] == IGNORE).all())


BAD_ROWS = [
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"', "line 2: not valid JSON"),
    ('{"messages": "hello"}', "line 2: field 'messages' must be a non-empty list"),
    ('{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}', "line 2: field 'messages[0].role' is 'robot'"),
    ('{"conversations": [{"from": "human", "value": 42}, {"from": "gpt", "value": "x"}]}', "line 2: field 'conversations[0].value' must be a string"),
    ('{"messages": [{"role": "user", "content": "no answer"}]}', "line 2: field 'messages' has no assistant turn"),
    ('{"prompt": "x"}', "line 2: no 'conversations' (ShareGPT) or 'messages' (OpenAI) field"),
    ('[1, 2]', "line 2: a row must be a JSON object, got list"),
]


@pytest.mark.parametrize("bad,expected", BAD_ROWS)
def test_malformed_rows_name_file_line_and_field(tmp_path, bad, expected):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    path = tmp_path / "data.jsonl"
    path.write_text(good + "\n" + bad + "\n" + good + "\n")
    with pytest.raises(ropekit.RopekitError) as info:
        load_data(path, tiny_tokenizer())
    message = str(info.value)
    assert message.startswith(f"data.jsonl {expected}") and "--skip-bad-rows" in message and "\n" not in message
    examples, report = load_data(path, tiny_tokenizer(), skip_bad_rows=True)
    assert len(examples) == 2 and report.skipped == 1 and report.first_error.startswith("data.jsonl line 2")


def test_text_sources_and_missing_files(tmp_path):
    tokenizer = tiny_tokenizer()
    (tmp_path / "a.txt").write_text("First document.")
    (tmp_path / "b.txt").write_text("Second document, longer.")
    examples, report = load_data(tmp_path, tokenizer)
    assert report.kind == "text" and len(examples) == 2
    assert all(e.labels == e.input_ids and e.input_ids[-1] == tokenizer.eos_token_id for e in examples)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "hello"}) + "\n" + json.dumps({"text": 5}) + "\n")
    with pytest.raises(ropekit.RopekitError, match="rows.jsonl line 2: field 'text' must be a string"):
        load_data(tmp_path / "rows.jsonl", tokenizer)
    with pytest.raises(ropekit.RopekitError, match="does not exist"):
        load_data(tmp_path / "missing.jsonl", tokenizer)
    (tmp_path / "table.csv").write_text("a,b")
    with pytest.raises(ropekit.RopekitError, match="unknown file type .csv"):
        load_data(tmp_path / "table.csv", tokenizer)


def test_conversations_need_a_chat_template(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(MULTI_TURN_OPENAI) + "\n")
    with pytest.raises(ropekit.RopekitError, match="no chat template"):
        load_data(path, tokenizer)
    template = tmp_path / "t.jinja"
    template.write_text(CHATML)
    (example,), _ = load_data(path, tokenizer, chat_template=str(template))
    assert labelled_text(tokenizer, example) == ["A one.<|im_end|>\n", "A two.<|im_end|>\n"]


def test_context_parallel_collate_pads_to_a_multiple_and_keeps_positions():
    from ropekit.training.trainer import collate_padded

    rows = [{"input_ids": torch.arange(3, 13), "labels": torch.arange(3, 13), "position_ids": torch.tensor([0, 1, 2, 50, 51, 52, 53, 54, 98, 99]), "jumps": True},
            {"input_ids": torch.arange(3, 9), "labels": torch.arange(3, 9), "position_ids": torch.arange(6), "jumps": False}]
    batch = collate_padded(rows, multiple=8)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["position_ids"][0, :10].tolist() == [0, 1, 2, 50, 51, 52, 53, 54, 98, 99]
    assert batch["attention_mask"].sum(1).tolist() == [10, 6] and bool((batch["labels"][1, 6:] == IGNORE).all())
    model = tiny_model("llama")
    with torch.no_grad():  # padding at the end changes nothing for the real tokens
        padded = model(**{k: batch[k] for k in ("input_ids", "position_ids", "attention_mask")}).logits
        alone = model(input_ids=rows[1]["input_ids"][None]).logits
    assert torch.allclose(padded[1, :6], alone[0], atol=1e-5)


def test_parquet_and_saved_dataset_sources(tmp_path):
    from datasets import Dataset

    tokenizer = tiny_tokenizer()
    rows = [MULTI_TURN_OPENAI, MULTI_TURN_OPENAI]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "chat.parquet"))
    Dataset.from_list([{"text": "one document"}, {"text": "another"}]).save_to_disk(str(tmp_path / "saved"))
    chat, report = load_data(tmp_path / "chat.parquet", tokenizer)
    assert report.kind == "chat" and len(chat) == 2 and labelled_text(tokenizer, chat[0]) == ["A one.</s>", "A two.</s>"]
    text, report = load_data(tmp_path / "saved", tokenizer)
    assert report.kind == "text" and [tokenizer.decode(e.input_ids[:-1]) for e in text] == ["one document\n", "another\n"]


def test_synthetic_conversations_are_deterministic_and_answerable(tmp_path):
    from ropekit.training.synthetic import synthetic_conversations

    tokenizer = tiny_tokenizer()
    source = tmp_path / "filler.txt"
    source.write_text("\n".join(f"Line {i} of some public-domain filler text." for i in range(3000)))
    a = synthetic_conversations(tokenizer, 6, max_tokens=2000, seed=3, source=str(source))
    b = synthetic_conversations(tokenizer, 6, max_tokens=2000, seed=3, source=str(source))
    assert a == b and a != synthetic_conversations(tokenizer, 6, max_tokens=2000, seed=4, source=str(source))
    for row in a:
        messages = row["messages"]
        assert messages[0]["role"] == "user" and messages[-1]["role"] == "assistant"
        document = messages[0]["content"]
        for answer in (m["content"] for m in messages if m["role"] == "assistant"):
            value = answer.rstrip(".").split(" is ")[-1].strip('"<>')
            assert value in document  # the answer is planted in the context


def test_mix_recipe_gives_half_conversations_half_text_with_loss_on_every_token(tmp_path, monkeypatch):
    """eabf-mix: half the samples are retrieval conversations (loss on the answers only), half plain-text windows at the
    training length (loss on every token), both saved next to the run."""
    import ropekit.training.synthetic as synthetic
    from ropekit.training.data import IGNORE
    from ropekit.training.stage import TrainOptions, prepare_rows
    from ropekit.training.recipes import get_recipe

    tokenizer = tiny_tokenizer()
    filler = tokenizer("\n".join(f"Line {i} of some public-domain filler text." for i in range(800)), add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(synthetic, "text_tokens", lambda tok, source="shakespeare", min_tokens=0: filler * (min_tokens // len(filler) + 1))
    options = TrainOptions(model="tiny", output=tmp_path / "run", samples=6, pack=False, min_tokens=0)
    rows, report = prepare_rows(options, get_recipe("eabf-mix"), tokenizer, "contiguous", 600)
    text = [r for r in rows if len(r) == 600 and "<|user|>" not in tokenizer.decode(r.input_ids)]
    chats = [r for r in rows if tokenizer.decode(r.input_ids).startswith("<|user|>Read the text below")]
    assert len(text) == 3 and all(len(r) == 600 and IGNORE not in r.labels for r in text)  # loss on every token, full length
    assert len(chats) == 3 and all(sum(label != IGNORE for label in r.labels) < len(r) / 4 for r in chats)  # answers only
    assert "3 Shakespeare text windows" in report.source
    assert len((tmp_path / "run" / "synthetic_text.jsonl").read_text().splitlines()) == 3
    assert len((tmp_path / "run" / "synthetic_data.jsonl").read_text().splitlines()) == 3


def test_mix_text_share_sets_how_many_samples_are_plain_text(tmp_path, monkeypatch):
    """--text-share 0.75 of 8 samples: 6 plain-text windows and 2 conversations; a share outside [0, 1) is refused."""
    import ropekit
    import ropekit.training.synthetic as synthetic
    from ropekit.training.stage import TrainOptions, prepare_rows
    from ropekit.training.recipes import get_recipe

    tokenizer = tiny_tokenizer()
    filler = tokenizer("\n".join(f"Line {i} of some public-domain filler text." for i in range(800)), add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(synthetic, "text_tokens", lambda tok, source="shakespeare", min_tokens=0: filler * (min_tokens // len(filler) + 1))
    options = TrainOptions(model="tiny", output=tmp_path / "run", samples=8, text_share=0.75, pack=False, min_tokens=0)
    rows, report = prepare_rows(options, get_recipe("eabf-mix"), tokenizer, "contiguous", 600)
    assert "6 Shakespeare text windows" in report.source
    assert len((tmp_path / "run" / "synthetic_data.jsonl").read_text().splitlines()) == 2
    from ropekit.train import train

    # refused before any model loads (the model path does not exist: its error would come first otherwise)
    for bad, message in ((dict(text_share=1.0), "text share 1.0 is outside"), (dict(synthetic_tasks="key,qoute"), "unknown synthetic task 'qoute'")):
        with pytest.raises(ropekit.RopekitError, match=message):
            train(TrainOptions(model=str(tmp_path / "no-such-model"), recipe="eabf-mix", output=str(tmp_path / "bad"), **bad))
        assert not (tmp_path / "bad").exists()


def test_quote_conversations_ask_for_words_the_context_holds(monkeypatch):
    """The opt-in quote task: each answer is the 30-60 words that follow a prefix occurring once in the user's text."""
    import re

    import ropekit.training.synthetic as synthetic

    tokenizer = tiny_tokenizer()
    filler = tokenizer(" ".join(f"Verse {i} sings of {['ships', 'stars', 'rain', 'kings'][i % 4]} and {i * 7 % 13} swans." for i in range(900)),
                       add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(synthetic, "text_tokens", lambda tok, source="shakespeare", min_tokens=0: filler)
    rows = synthetic.synthetic_conversations(tokenizer, 12, max_tokens=3000, seed=3, tasks=("quote",))
    assert len(rows) == 12
    for row in rows:
        context = row["messages"][0]["content"].rsplit("\n\n", 1)[0]  # the text, without the first question
        words = " ".join(context.split())
        for question, answer in zip(row["messages"][0::2], row["messages"][1::2]):
            wanted, prefix = re.search(r'Quote the (\d+) words that follow "(.+)" in the text\.', question["content"]).groups()
            assert len(prefix.split()) == synthetic.QUOTE_PREFIX_WORDS and words.count(prefix) == 1
            assert len(answer["content"].split()) == int(wanted) and 30 <= int(wanted) <= 60
            assert f"{prefix} {answer['content']}" in words  # verbatim, right after the prefix
    default = synthetic.synthetic_conversations(tokenizer, 12, max_tokens=3000, seed=3)
    assert not any("Quote the" in m["content"] for r in default for m in r["messages"])  # opt-in: the default data is unchanged
