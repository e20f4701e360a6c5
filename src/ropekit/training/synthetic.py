"""Synthetic long-context training conversations, generated offline from a seed.

Each conversation is a long user message — natural filler text (Shakespeare, from :mod:`ropekit.corpus`) with
a few planted records at random depths — followed by one or two questions about them and the answers:

* ``fact``: "The secret ingredient of recipe 17 is saffron."  → "What is the secret ingredient of recipe 17?"
* ``key``: "The pass key of vault 4 is 48213."                → "What is the pass key of vault 4?"
* ``kv``: a JSON object of random UUID-like keys and values  → "What is the value of key "…"?"
* ``line``: "line 23: REGISTER_CONTENT is <4567>" records     → "What is the REGISTER_CONTENT in line 23?"
* ``quote`` (opt-in): nothing planted; a passage of the filler itself → "Quote the 40 words that follow "…" in the
  text." The answer is natural text copied from the context (30–60 words; fewer in a short document, and a pass
  key instead where the document is too short to quote), so the loss on it is language modelling
  that needs retrieval, rather than a few record tokens (a lever of docs/training.md, "Recipes that keep the model").

The first four answers are short, so the loss (assistant tokens only) is all about retrieving across the context. The records
differ in form from the evaluation tasks' (passkey prompt, NIAH needle), and the evaluation uses its own seeds, so a
model trained on these is not trained on the test items.
"""

from __future__ import annotations

import random
import string

from ..corpus import text_tokens

INGREDIENTS = ["saffron", "basil", "cardamom", "tamarind", "fennel", "sumac", "juniper", "anise", "lovage", "mace",
               "sorrel", "galangal", "nutmeg", "caraway", "tarragon", "chervil", "fenugreek", "marjoram", "hyssop", "borage"]
TASKS = ("fact", "key", "kv", "line")  # the default mix
ALL_TASKS = TASKS + ("quote",)
QUOTE_PREFIX_WORDS = 8


def parse_tasks(tasks: str | tuple | list) -> tuple[str, ...]:
    """``"fact,key,quote"`` → ``("fact", "key", "quote")``; one clear error for an unknown or empty list."""
    from ..errors import RopekitError

    names = tuple(t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip())
    unknown = [t for t in names if t not in ALL_TASKS]
    if unknown or not names:
        raise RopekitError(f"unknown synthetic task {unknown[0]!r}" if unknown else "no synthetic task given",
                           f"use some of: {', '.join(ALL_TASKS)} (joined by commas)")
    return names


def _quote(document: str, rng: random.Random) -> tuple[str, str] | None:
    """(question, answer) asking for the words that follow a unique 8-word prefix of ``document``; None if none found."""
    words = document.split()
    length = min(rng.randint(30, 60), len(words) // 2 - QUOTE_PREFIX_WORDS)  # a short document: a shorter quote
    if length < 10:
        return None
    last = len(words) - QUOTE_PREFIX_WORDS - length
    for _ in range(20):  # a prefix that occurs once, so the question has one answer
        if last <= 0:
            return None
        at = rng.randrange(0, last)
        prefix = " ".join(words[at:at + QUOTE_PREFIX_WORDS])
        if " ".join(words).count(prefix) == 1:
            answer = " ".join(words[at + QUOTE_PREFIX_WORDS:at + QUOTE_PREFIX_WORDS + length])
            return f'Quote the {length} words that follow "{prefix}" in the text.', answer
    return None


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
    tasks = parse_tasks(tasks)
    rng = random.Random(f"synthetic-{seed}")
    filler = text_tokens(tokenizer, source)
    min_tokens = min_tokens or max_tokens // 2
    rows = []
    for index in range(count):
        room = 320 if "quote" in tasks else 200  # room for the template, the records and the answers (a quote's: ~80 tokens)
        budget = rng.randint(min_tokens, max_tokens) - room
        start = rng.randrange(0, max(1, len(filler) - budget))
        haystack = tokenizer.decode(filler[start:start + max(budget, 64)])
        paragraphs = haystack.split("\n")
        planted, quotes = [], 0
        for _ in range(rng.randint(1, 4)):
            task = rng.choice(tasks)
            if task == "quote":  # asked about the final document, below
                quotes += 1
                continue
            record, question, answer = _record(task, rng, index)
            at = rng.randint(0, len(paragraphs))
            paragraphs.insert(at, record)
            planted.append((question, answer))
        document = "\n".join(paragraphs)
        for _ in range(quotes):
            asked_quote = _quote(document, rng)
            if asked_quote is not None:
                planted.append(asked_quote)
        if not planted:  # a document too short to quote from: plant a record of another kind (a pass key if none)
            others = [t for t in tasks if t != "quote"] or ["key"]
            record, question, answer = _record(rng.choice(others), rng, index)
            document += "\n" + record
            planted.append((question, answer))
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
