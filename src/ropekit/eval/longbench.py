"""LongBench v1 (Bai et al. 2023, "LongBench: A Bilingual, Multitask Benchmark for Long Context Understanding",
arXiv 2308.14508), run from local JSONL files, English datasets only.

Official sources (github.com/THUDM/LongBench), copied here, not imported:

- prompts: ``config/dataset2prompt.json`` (commit 8ae23fd4), English entries verbatim in :data:`DATASET2PROMPT`;
- max generation lengths: ``config/dataset2maxlen.json``. The revision stored for THUDM/LongBench (f6227eb7) predates
  multi_news, samsum and passage_retrieval_en; their values (512, 128, 32) are from the final file, as found in
  unmodified copies of it (e.g. amirzandieh/QJL ``config/dataset2maxlen.json``). The other 13 values agree with both;
- prediction: ``LongBench/pred.py`` (commit c5ea10bc): the prompt is ``template.format(**row)``; a prompt longer than
  the budget is truncated in the middle (first ``int(budget/2)`` tokens + last ``int(budget/2)`` tokens, each half
  decoded, the texts joined); the chat template is applied except on trec, triviaqa, samsum, lsht, lcc and repobench-p;
  greedy decoding;
- scoring: ``metrics.py`` (commit f6227eb7) and ``LongBench/eval.py`` (commit 072a5a73): ``dataset2metric``; for trec,
  triviaqa, samsum and lsht only the first line of the prediction (after stripping leading newlines) is scored; a
  sample's score is the max over its reference answers; a dataset's score is ``round(100 * mean, 2)``.

Units: ``length`` L is a token budget per sample for prompt + generation. A dataset with max generation length G gets
prompts of at most L - G tokens, counting the BOS and chat-template tokens (pred.py's ``max_length`` is the prompt
budget alone, before the template; its model2maxlen values leave room for generation, e.g. 3500 for a 4k model).

Deviations from the official code (the metrics need no extra packages):

- ``rouge_score`` re-implements ROUGE-L F of the ``rouge`` package (pltrdy, 1.0.1), ``Rouge().get_scores(p, g,
  avg=True)["rouge-l"]["f"]``: sentences split on ".", words split on single spaces, summary-level union LCS over sets of
  words (its ``exclusive=True`` default), P = |union| / |distinct hypothesis words|, R = |union| / |distinct reference
  words|, F = 2PR / (P + R + 1e-8); no lowercasing or stemming. The package traces the LCS back recursively, so a
  sentence pair longer than ~1000 words raises RecursionError there, which LongBench turns into 0; here it is scored.
- ``code_sim_score``: the official one calls ``fuzzywuzzy.fuzz.ratio``. Here it is fuzzywuzzy's pure-Python path:
  ``round(100 * difflib.SequenceMatcher(None, a, b).ratio())`` (100 if equal, 0 if one is empty), / 100. With
  python-Levenshtein installed, fuzzywuzzy uses Levenshtein's ratio instead, which can differ by a few points.
- ``classification_score``: the official difflib fallback sits under ``if em_match_list != 0``, which is always true
  (a list is never 0), so it never runs and is left out; the rest (including removing from the list while iterating
  over it) is reproduced.
- samsum: pred.py also stops generation at the first newline token (and forbids an empty output). ``generate_greedy``
  stops only at EOS, so up to 128 tokens are generated; the score is the same since only the first line is scored.
- Chinese datasets (multifieldqa_zh, dureader, vcsum, lsht, passage_retrieval_zh) need jieba segmentation and are
  refused. LongBench-E (``*_e`` files) is not supported.

Greedy decoding is deterministic, so ``seed`` is unused.
"""

from __future__ import annotations

import difflib
import json
import re
import string
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import RopekitError
from .scoring import generate_greedy
from .tasks import Task, register

# config/dataset2prompt.json (English entries, verbatim).
DATASET2PROMPT = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}

# config/dataset2maxlen.json (English entries): max new tokens per dataset.
DATASET2MAXLEN = {
    "narrativeqa": 128,
    "qasper": 128,
    "multifieldqa_en": 64,
    "hotpotqa": 32,
    "2wikimqa": 32,
    "musique": 32,
    "gov_report": 512,
    "qmsum": 512,
    "multi_news": 512,
    "trec": 64,
    "triviaqa": 32,
    "samsum": 128,
    "passage_count": 32,
    "passage_retrieval_en": 32,
    "lcc": 64,
    "repobench-p": 64,
}

ENGLISH = tuple(DATASET2PROMPT)
CHINESE = ("multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh")
NO_CHAT_TEMPLATE = ("trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p")  # pred.py: "chat models are better off without"
FIRST_LINE_ONLY = ("trec", "triviaqa", "samsum", "lsht")  # eval.py: only the first line of the prediction is scored


# ---------------------------------------------------------------------------------------------------------------------
# Metrics (metrics.py). Each returns a float in [0, 1] for one (prediction, reference answer) pair.
# ---------------------------------------------------------------------------------------------------------------------

def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (SQuAD style)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: list[str], ground_truth: list[str]) -> float:
    common = Counter(prediction) & Counter(ground_truth)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction)
    recall = num_same / len(ground_truth)
    return (2 * precision * recall) / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """Token F1 of the normalized answers."""
    return f1_score(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _rouge_sentences(text: str) -> list[str]:
    """The ``rouge`` package's preprocessing: split on ".", drop empty parts, collapse whitespace."""
    return [" ".join(part.split()) for part in text.split(".") if len(part) > 0]


def _lcs_words(x: list[str], y: list[str]) -> list[str]:
    """One longest common subsequence of word lists, traced back as ``rouge_score._recon_lcs`` does (ties go to j-1)."""
    n, m = len(x), len(y)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        xi, row, above = x[i - 1], table[i], table[i - 1]
        for j in range(1, m + 1):
            row[j] = above[j - 1] + 1 if xi == y[j - 1] else max(above[j], row[j - 1])
    out, i, j = [], n, m
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            out.append(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out[::-1]


def rouge_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """ROUGE-L F as ``rouge.Rouge().get_scores([p], [g], avg=True)["rouge-l"]["f"]`` (summary-level union LCS)."""
    hyp, ref = _rouge_sentences(prediction), _rouge_sentences(ground_truth)
    if not hyp or not ref:
        return 0.0  # the package raises ValueError; LongBench returns 0
    hyp_words = {w for s in hyp for w in s.split(" ")}
    ref_words = {w for s in ref for w in s.split(" ")}
    union: set[str] = set()
    for ref_sentence in ref:
        for hyp_sentence in hyp:
            union.update(_lcs_words(ref_sentence.split(" "), hyp_sentence.split(" ")))
    p, r = len(union) / len(hyp_words), len(union) / len(ref_words)
    return 2.0 * ((p * r) / (p + r + 1e-8))


def classification_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """1 / (number of class names found in the prediction) if the true class is among them, else 0."""
    em_match_list = [name for name in kwargs["all_classes"] if name in prediction]
    for match_term in em_match_list:  # as in metrics.py, removing while iterating (the next item is skipped)
        if match_term in ground_truth and match_term != ground_truth:
            em_match_list.remove(match_term)
    return 1.0 / len(em_match_list) if ground_truth in em_match_list else 0.0


def retrieval_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """Fraction of the numbers in the prediction that equal the N of the answer "Paragraph N"."""
    matches = re.findall(r"Paragraph (\d+)", ground_truth)
    if not matches:
        raise RopekitError(f"passage_retrieval_en answer {ground_truth!r} has no 'Paragraph N'", "use the official LongBench file")
    numbers = re.findall(r"\d+", prediction)
    return 0.0 if not numbers else sum(number == matches[0] for number in numbers) / len(numbers)


def count_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """Fraction of the numbers in the prediction that equal the answer."""
    numbers = re.findall(r"\d+", prediction)
    return 0.0 if not numbers else sum(number == str(ground_truth) for number in numbers) / len(numbers)


def fuzz_ratio(a: str, b: str) -> int:
    """``fuzzywuzzy.fuzz.ratio`` without python-Levenshtein: 0-100, rounded."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))


def code_sim_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """Similarity of the first prediction line that is not a comment or code fence to the reference line."""
    line = ""
    for candidate in prediction.lstrip("\n").split("\n"):
        if "`" not in candidate and "#" not in candidate and "//" not in candidate:
            line = candidate
            break
    return fuzz_ratio(line, ground_truth) / 100


DATASET2METRIC = {
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "gov_report": rouge_score,
    "qmsum": rouge_score,
    "multi_news": rouge_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_score,
    "passage_count": count_score,
    "passage_retrieval_en": retrieval_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
}


def score_sample(dataset: str, prediction: str, answers: list[str], all_classes=None) -> float:
    """One sample's score in [0, 1]: the first-line rule where it applies, then the max over the reference answers."""
    if dataset in FIRST_LINE_ONLY:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = DATASET2METRIC[dataset]
    score = 0.0
    for answer in answers:
        score = max(score, metric(prediction, answer, all_classes=all_classes))
    return score


def dataset_score(scores: list[float]) -> float:
    """eval.py's dataset score: ``round(100 * mean, 2)`` of the per-sample scores in [0, 1]."""
    return round(100 * sum(scores) / len(scores), 2)


# ---------------------------------------------------------------------------------------------------------------------
# Data and prompts
# ---------------------------------------------------------------------------------------------------------------------

def check_dataset(name: str) -> str:
    if name in CHINESE:
        raise RopekitError(f"LongBench dataset {name!r} is Chinese: its metrics need jieba word segmentation, which ropekit does not do",
                           f"use English datasets: {', '.join(ENGLISH)}")
    if name not in DATASET2PROMPT:
        raise RopekitError(f"unknown LongBench dataset {name!r}", f"use one of: {', '.join(ENGLISH)}")
    return name


def load_rows(path: Path, dataset: str, max_samples: int | None = None) -> list[dict]:
    """The first ``max_samples`` rows (all when None) of a LongBench JSONL file, each checked for the fields we use."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if max_samples is not None and len(rows) >= max_samples:
                break
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RopekitError(f"{where} is not valid JSON ({err.msg})", "fix or delete that line, or re-download the file") from None
            if not isinstance(row, dict):
                raise RopekitError(f"{where} is not a JSON object", "each line must be one LongBench row")
            for key in ("context", "input"):
                if not isinstance(row.get(key), str):
                    raise RopekitError(f"{where} has no string field {key!r}", "each row needs input, context and answers")
            answers = row.get("answers")
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise RopekitError(f"{where}: 'answers' must be a non-empty list of strings", "each row needs input, context and answers")
            if DATASET2METRIC[dataset] is classification_score and not isinstance(row.get("all_classes"), list):
                raise RopekitError(f"{where}: {dataset} rows need 'all_classes' (a list of class names)", "use the official LongBench file")
            rows.append(row)
    if not rows:
        raise RopekitError(f"{path} has no rows", "re-download it (LongBench data.zip) or remove it from datasets")
    return rows


def build_prompt(dataset: str, row: dict) -> str:
    """The official prompt of ``dataset`` filled with the row's context and input."""
    return DATASET2PROMPT[dataset].format(context=row["context"], input=row["input"])


def truncate_middle(ids: list[int], max_tokens: int) -> list[int]:
    """pred.py's truncation: if too long, keep the first and the last ``int(max_tokens / 2)`` tokens."""
    if len(ids) <= max_tokens:
        return list(ids)
    half = int(max_tokens / 2)
    return list(ids[:half]) + list(ids[len(ids) - half:])


def _wrap(tokenizer, text: str, chat: bool) -> list[int]:
    """Token ids of the final model input: the chat template around ``text``, or ``text`` with the tokenizer's BOS."""
    if chat:
        templated = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return tokenizer(templated, add_special_tokens=False).input_ids  # the template writes its own BOS
    return tokenizer(text).input_ids


def build_context(tokenizer, prompt: str, max_tokens: int, chat: bool) -> tuple[list[int], bool]:
    """Model input of at most ``max_tokens`` tokens (template included): ``(ids, truncated)``.

    The prompt is truncated in the middle as in pred.py (halves decoded, texts joined) to ``max_tokens`` minus the
    template's own tokens; re-encoding the joined text can merge tokens at the seam, so the budget is re-checked.
    """
    overhead = len(_wrap(tokenizer, "", chat))
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    budget = max_tokens - overhead
    for _ in range(8):
        if len(ids) <= budget:
            text, truncated = prompt, False
        elif budget < 2:
            raise RopekitError(f"a budget of {max_tokens} prompt tokens is too small for LongBench ({overhead} template tokens)",
                               "use longer lengths (each length must exceed the dataset's max generation length by ~100 tokens)")
        else:
            half = int(budget / 2)
            text = tokenizer.decode(ids[:half], skip_special_tokens=True) + tokenizer.decode(ids[len(ids) - half:], skip_special_tokens=True)
            truncated = True
        context = _wrap(tokenizer, text, chat)
        if len(context) <= max_tokens:
            return context, truncated
        budget = min(budget, len(ids)) - (len(context) - max_tokens)
    raise RopekitError(f"could not fit a LongBench prompt into {max_tokens} tokens", "use longer lengths")


def _use_chat(tokenizer, dataset: str, chat) -> bool:
    if dataset in NO_CHAT_TEMPLATE or chat is False:
        return False
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat is True and not has_template:
        raise RopekitError("chat=True but the tokenizer has no chat template", "use chat='auto' or chat=False")
    return has_template


def _parse_options(data_dir, datasets, max_samples, chat, batch_size) -> tuple[Path, list[str], int | None, object, int]:
    if data_dir is None or str(data_dir).strip() == "":
        raise RopekitError("the longbench task needs data_dir", "pass data_dir=FOLDER with the LongBench JSONL files "
                           "(data.zip from huggingface.co/datasets/THUDM/LongBench, unzipped: narrativeqa.jsonl, ...)")
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise RopekitError(f"longbench data_dir {str(folder)!r} is not a folder", "pass the folder holding narrativeqa.jsonl etc.")
    if isinstance(datasets, str):
        datasets = [name.strip() for name in datasets.split(",") if name.strip()]
    if datasets:
        names = [check_dataset(name) for name in datasets]
        for name in names:
            if not (folder / f"{name}.jsonl").is_file():
                raise RopekitError(f"LongBench file {folder / (name + '.jsonl')} does not exist",
                                   f"put {name}.jsonl (from LongBench data.zip) in {folder}, or drop {name} from datasets")
    else:
        names = [name for name in ENGLISH if (folder / f"{name}.jsonl").is_file()]
        if not names:
            raise RopekitError(f"no English LongBench files in {folder}",
                               f"put files like narrativeqa.jsonl there (from LongBench data.zip); expected names: {', '.join(ENGLISH)}")
    if max_samples is not None:
        try:
            max_samples = int(max_samples)
        except (TypeError, ValueError):
            raise RopekitError(f"longbench max_samples must be a whole number, got {max_samples!r}", "pass e.g. max_samples=20") from None
        if max_samples < 1:
            raise RopekitError(f"longbench max_samples must be at least 1, got {max_samples}", "pass e.g. max_samples=20, or None for all")
    if isinstance(chat, str) and chat.lower() in ("true", "false", "auto"):
        chat = {"true": True, "false": False, "auto": "auto"}[chat.lower()]
    if chat not in (True, False, "auto"):
        raise RopekitError(f"longbench chat must be 'auto', True or False, got {chat!r}", "pass chat=auto")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise RopekitError(f"batch_size must be at least 1, got {batch_size}", "pass batch_size=1")
    return folder, names, max_samples, chat, batch_size


# ---------------------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------------------

def _predict(model, tokenizer, contexts: list[list[int]], max_new_tokens: int, batch_size: int, bar) -> list[str]:
    """Greedy predictions; rows are visited shortest first so equal-length rows share a batch."""
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
    predictions: list[str] = [""] * len(contexts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for i, text in zip(chunk, generate_greedy(model, tokenizer, [contexts[i] for i in chunk], max_new_tokens, batch_size)):
            predictions[i] = text
        bar.update(len(chunk))
    return predictions


def run_longbench(model, tokenizer, lengths: list[int], data_dir=None, datasets=None, max_samples=None, chat="auto",
                  batch_size: int = 1, progress: bool = True) -> dict[int, dict]:
    """LongBench scores per length L (prompt + generation ≤ L tokens): ``{L: {"score", "n", "datasets", "samples"}}``."""
    folder, names, max_samples, chat, batch_size = _parse_options(data_dir, datasets, max_samples, chat, batch_size)
    data = {name: load_rows(folder / f"{name}.jsonl", name, max_samples) for name in names}
    for length in lengths:
        for name in names:
            if int(length) - DATASET2MAXLEN[name] < 16:
                raise RopekitError(f"length {length} leaves no room for a {name} prompt ({DATASET2MAXLEN[name]} tokens are generated)",
                                   f"use lengths above {DATASET2MAXLEN[name] + 128}")
    out: dict[int, dict] = {}
    bar = tqdm(total=len(lengths) * sum(len(rows) for rows in data.values()), desc="longbench", disable=not progress, leave=False)
    for length in lengths:
        length = int(length)
        per_dataset, samples = {}, []
        for name, rows in data.items():
            max_gen, use_chat = DATASET2MAXLEN[name], _use_chat(tokenizer, name, chat)
            built = [build_context(tokenizer, build_prompt(name, row), length - max_gen, use_chat) for row in rows]
            predictions = _predict(model, tokenizer, [ids for ids, _ in built], max_gen, batch_size, bar)
            scores = []
            for row, (ids, truncated), prediction in zip(rows, built, predictions):
                score = score_sample(name, prediction, row["answers"], row.get("all_classes"))
                scores.append(score)
                samples.append({"dataset": name, "_id": row.get("_id"), "prediction": prediction, "answers": row["answers"],
                                "score": 100.0 * score, "prompt_tokens": len(ids), "truncated": truncated})
            per_dataset[name] = {"score": dataset_score(scores), "n": len(scores)}
        out[length] = {"score": round(sum(d["score"] for d in per_dataset.values()) / len(per_dataset), 2),
                       "n": sum(d["n"] for d in per_dataset.values()), "datasets": per_dataset, "samples": samples}
    bar.close()
    return out


def _run(model, tokenizer, lengths, seed=0, progress=True, data_dir=None, datasets=None, max_samples=None, chat="auto", batch_size=1):
    return run_longbench(model, tokenizer, list(lengths), data_dir=data_dir, datasets=datasets, max_samples=max_samples,
                         chat=chat, batch_size=batch_size, progress=progress)


register(Task("longbench", "LongBench v1, 16 English datasets from local JSONL files: official prompts, middle truncation, official metrics",
              "score (0-100, official metrics)", True, _run,
              {"data_dir": None, "datasets": None, "max_samples": None, "chat": "auto", "batch_size": 1}, kind="dataset"))
