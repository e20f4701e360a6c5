"""Synthetic long-context training conversations, generated offline from a seed.

Each conversation is a long user message — natural filler text (Shakespeare, from :mod:`ropekit.corpus`) with
a few planted records at random depths — followed by one or two questions about them and the answers:

* ``fact``: "The secret ingredient of recipe 17 is saffron."  → "What is the secret ingredient of recipe 17?"
* ``key``: "The pass key of vault 4 is 48213."                → "What is the pass key of vault 4?"
* ``kv``: a JSON object of random UUID-like keys and values  → "What is the value of key "…"?"
* ``line``: "line 23: REGISTER_CONTENT is <4567>" records     → "What is the REGISTER_CONTENT in line 23?"

The answers are short, so the loss (assistant tokens only) is all about retrieving across the context. The records
differ in form from the evaluation tasks' (passkey prompt, NIAH needle), and the evaluation uses its own seeds, so a
model trained on these is not trained on the test items.
"""

from __future__ import annotations

import random
import string

from ..corpus import text_tokens

INGREDIENTS = ["saffron", "basil", "cardamom", "tamarind", "fennel", "sumac", "juniper", "anise", "lovage", "mace",
               "sorrel", "galangal", "nutmeg", "caraway", "tarragon", "chervil", "fenugreek", "marjoram", "hyssop", "borage"]
TASKS = ("fact", "key", "kv", "line")


def _record(task: str, rng: random.Random, index: int) -> tuple[str, str, str]:
    """(record sentence, question, answer) for one planted record."""
    if task == "fact":
        number, word = rng.randint(1, 999), rng.choice(INGREDIENTS)
        return (f"The secret ingredient of recipe {number} is {word}.", f"What is the secret ingredient of recipe {number}?",
                f"The secret ingredient of recipe {number} is {word}.")
    if task == "key":
        vault, key = rng.randint(1, 99), rng.randint(10000, 99999)
        return (f"The pass key of vault {vault} is {key}. Remember it.", f"What is the pass key of vault {vault}?",
                f"The pass key of vault {vault} is {key}.")
    if task == "kv":
        def token():
            return "".join(rng.choices(string.ascii_lowercase + string.digits, k=8))
        pairs = {token(): token() for _ in range(6)}
        key = rng.choice(list(pairs))
        body = ", ".join(f'"{k}": "{v}"' for k, v in pairs.items())
        return f"JSON data: {{{body}}}", f'What is the value of key "{key}" in the JSON data?', f'The value of key "{key}" is "{pairs[key]}".'
    line, value = rng.randint(1, 200), rng.randint(1000, 9999)
    return (f"line {line}: REGISTER_CONTENT is <{value}>", f"What is the REGISTER_CONTENT in line {line}?",
            f"The REGISTER_CONTENT in line {line} is <{value}>.")


def synthetic_conversations(tokenizer, count: int, max_tokens: int, min_tokens: int | None = None, seed: int = 0,
                            tasks: tuple[str, ...] = TASKS, source: str = "shakespeare") -> list[dict]:
    """``count`` OpenAI-form rows (``{"messages": [...]}``) of roughly ``min_tokens``–``max_tokens`` tokens each."""
    rng = random.Random(f"synthetic-{seed}")
    filler = text_tokens(tokenizer, source)
    min_tokens = min_tokens or max_tokens // 2
    rows = []
    for index in range(count):
        budget = rng.randint(min_tokens, max_tokens) - 200  # room for the template, the records and the answers
        start = rng.randrange(0, max(1, len(filler) - budget))
        haystack = tokenizer.decode(filler[start:start + max(budget, 64)])
        paragraphs = haystack.split("\n")
        planted = []
        for _ in range(rng.randint(1, 4)):
            record, question, answer = _record(rng.choice(tasks), rng, index)
            at = rng.randint(0, len(paragraphs))
            paragraphs.insert(at, record)
            planted.append((question, answer))
        document = "\n".join(paragraphs)
        asked = rng.sample(planted, k=min(len(planted), rng.choice((1, 2))))
        messages = [{"role": "user", "content": f"Read the text below and answer questions about it.\n\n{document}\n\n{asked[0][0]}"},
                    {"role": "assistant", "content": asked[0][1]}]
        for question, answer in asked[1:]:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def text_windows(tokenizer, count: int, tokens: int, seed: int = 0, source: str = "shakespeare") -> list[dict]:
    """``count`` rows ``{"text": ...}`` of about ``tokens`` tokens of plain text from random places of ``source``: the
    language-modelling half of the ``mix`` data (loss on every token), so fine-tuning on short answers does not
    wreck the model's text perplexity."""
    rng = random.Random(f"text-windows-{seed}")
    filler = text_tokens(tokenizer, source, min_tokens=tokens + 33)
    rows = []
    for _ in range(count):
        start = rng.randrange(0, max(1, len(filler) - tokens - 32))
        # a few tokens more than asked: decoding and encoding again may merge tokens at the edges; the trainer cuts
        rows.append({"text": tokenizer.decode(filler[start:start + tokens + 32])})
    return rows
