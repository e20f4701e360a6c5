"""``ropekit lab``: every method's claim tested end to end on a CPU — a small RoPE model trained from scratch at a
short native window, then extended 4× with every method under one budget and evaluated at 1×–8×.

Length-generalisation research answers "does this position scheme work beyond the window?" with small models trained
from scratch on tasks that need long-range retrieval (Ruoss et al. 2023 randomized positions; PoSE's and CREAM's own
ablations). The lab does the same with ropekit's own pieces, so it also checks them end to end:

1. **Pre-train** (cached under ``$ROPEKIT_CACHE/lab``): a small Llama (:class:`Shape`: 4 layers for the default
   budget, :data:`~ropekit.studies.lab.model.DEEP`; 2 for ``--quick``) learns a character-level mix of natural text
   (Shakespeare), pass-key, key–value and (default budget) binding sequences at a native window of 128 tokens,
   on the transformers ``Trainer`` through ropekit's training components (:class:`ropekit.training.trainer.TrainingSet`,
   :class:`~ropekit.training.trainer.RopekitTrainer`, :class:`~ropekit.training.trainer.LossLog`). A second run loads the cache.
2. **Extend** the pre-trained model to 4× with every row of :data:`ROWS` — training-free, fine-tuned at 4×, or
   trained at the native window with a position strategy (CREAM, PoSE, RandPos) — through :func:`ropekit.extend`
   and the same training components; every trained row gets the same number of tokens and optimizer steps, and
   every method is configured for the target (:func:`configured_params`: ABF's base by :func:`abf_theta_factor`).
3. **Evaluate** every row with the task registry and the resumable runner (:func:`ropekit.eval.runner.evaluate`) at
   1×, 2×, 4× and 8× the native window (``--quick``: 1×–4×) — binding (the main task), pass key, key–value
   retrieval by depth (the middle third reported apart) and perplexity — on one item set (:func:`evaluation_seed`: ``dev`` for design and ``--quick``, ``test``,
   one set per pre-training seed, for the default), and render the usual report; ``lab.md`` checks the papers'
   claims (:data:`CLAIMS`) at the target with paired verdicts, the lengths beyond it in a robustness table.

**Tokenizer and tasks.** A model this small does not transfer to a prompt format it never saw, so the lab has its
own character-level tokenizer (:func:`lab_tokenizer`: lower-case letters, punctuation, digits, 26 key symbols
``<A>``–``<Z>`` and marker tokens) and its own three retrieval tasks, registered in the evaluation task registry as
``lab-passkey``, ``lab-kv`` and ``lab-bind``. Training sequences and evaluation prompts share these templates:

* pass key — ``<s> haystack… <key> d1..dk …haystack <query> <answer> d1..dk`` (k = 1–5 digits, distinct);
* key–value — ``<s> haystack… <K1> value1 …haystack… <K9> value9 …haystack <query> <Kg> <answer> value_g``
  (values of 1–4 distinct digits; pairs at evenly spaced depths, the asked pair's depth is reported);
* binding — key–value with two-symbol keys (``<A><B> 714``), some pairs near misses of the asked key, and numbers
  scattered through the haystack (:func:`~ropekit.studies.lab.data.bind_sequence`);

where the haystack is one random phrase of 8–24 characters repeated (the shape of the usual "the grass is green"
filler). What never matches between training and evaluation:

* **values**: training keys and values have an even digit sum, evaluation ones an odd digit sum, so no evaluation
  answer ever occurs as a training answer;
* **fillers**: training phrases and text come from Shakespeare, evaluation phrases and the perplexity text from
  Milton's *Paradise Lost* (digits removed from both);
* **seeds**: training rows draw from ``random.Random("lab-train-…")``, evaluation items from ``"lab-eval-…-k-…"``
  with ``k`` the item set's evaluation seed (:func:`evaluation_seed`: 0 for dev items, 2000 + the pre-training seed
  for test items).

The perplexity task is the suite's ``ppl`` (last 64 tokens of windows of *Paradise Lost*).

**Adding a row** is one line in :data:`ROWS` (label, method, arm, strategy, options); the budget, caching,
evaluation, report, ``--list`` and claim tables pick it up. Options reach the pieces they belong to: ``params`` →
:func:`ropekit.extend`, ``strategy_params`` → the position strategy, ``dataset`` → :class:`~ropekit.training.trainer.TrainingSet`,
``trainer`` → :class:`~ropekit.training.trainer.RopekitTrainer`. For example, the rows for LongRecipe's sentence-gapped
positions and LongLoRA's shifted sparse attention (``ropekit train --attention s2``) are::

    Row("longrecipe-pi", "linear", "native", strategy="longrecipe", dataset={"sentence_ends": SENTENCE_END_IDS}),
    Row("longlora-pi", "linear", "target", trainer={"s2": {"group_ratio": 0.25}}),

**Rooms.** The package is split by what each part does; imports point one way, data → tasks → model → rows → claims
→ markdown → run (claims also use verdicts, which import nothing of the lab), and this ``__init__`` re-exports the public names (``from ropekit.studies.lab import lab, ROWS, Shape, …``;
the old path ``ropekit.lab`` is this same package, see :mod:`ropekit._moved`):

* :mod:`~ropekit.studies.lab.data` — vocabulary and tokenizer, the texts, value draws, the sequence generators,
  :class:`Mix` and :class:`LabSequences`;
* :mod:`~ropekit.studies.lab.tasks` — the ``lab-passkey`` and ``lab-kv`` evaluation tasks (registered on import);
* :mod:`~ropekit.studies.lab.model` — :class:`Shape`, the loss, :class:`Schedule`, :func:`train_lab`,
  :class:`LearningCurve`;
* :mod:`~ropekit.studies.lab.rows` — the row table, each row's configuration for the target, the item sets, the
  budgets, pre-training, one row's training, one seed's run, :func:`combine`;
* :mod:`~ropekit.studies.lab.verdicts` — paired verdicts (A vs B on the same items, over seeds); standalone;
* :mod:`~ropekit.studies.lab.claims` — the claims list and every claim checked on the per-seed results;
* :mod:`~ropekit.studies.lab.markdown` — ``lab.md``;
* :mod:`~ropekit.studies.lab.run` — :func:`lab`, the whole lab top to bottom.

A test that patches a lab internal patches the module that owns it (``ropekit.studies.lab.rows.ROWS``, not the
re-export here).
"""

from .claims import CLAIMS, PPL_TOLERANCE, claim_checks, compare
from .data import (ANSWER, BOS, CHARACTERS, DIGIT_IDS, DIGITS, EOS, KEY, KEY_IDS, KEY_SYMBOLS, PAD, QUERY, SENTENCE_END_IDS,
                   SPECIAL, TEXT_SOURCES, UNK, VOCABULARY, LabSequences, Mix, check_lab_tokenizer, draw_value, haystack,
                   kv_sequence, lab_text, lab_tokenizer, passkey_sequence, place, text_sequence)
from .markdown import lab_markdown
from .model import LearningCurve, Schedule, Shape, answer_weighted_loss, lab_model, stack_rows, train_lab
from .rows import (ARMS, BUDGETS, DATA_VERSION, EABF, ITEM_SETS, ROWS, Budget, Row, abf_theta_factor, combine, configured_params,
                   configured_range, evaluation_seed, get_rows, pretrain, pretrained_dir, run_seed, train_row)
from .run import lab
from .tasks import middle_third, run_lab_kv, run_lab_passkey

__all__ = [
    # data
    "SPECIAL", "KEY_SYMBOLS", "DIGITS", "CHARACTERS", "VOCABULARY", "PAD", "BOS", "EOS", "UNK", "KEY", "QUERY", "ANSWER",
    "KEY_IDS", "DIGIT_IDS", "SENTENCE_END_IDS", "TEXT_SOURCES", "lab_tokenizer", "check_lab_tokenizer", "lab_text",
    "draw_value", "haystack", "place", "passkey_sequence", "kv_sequence", "text_sequence", "Mix", "LabSequences",
    # tasks
    "run_lab_passkey", "run_lab_kv", "middle_third",
    # model
    "Shape", "lab_model", "answer_weighted_loss", "stack_rows", "Schedule", "train_lab", "LearningCurve",
    # rows
    "Row", "ARMS", "EABF", "ROWS", "get_rows", "abf_theta_factor", "configured_params", "configured_range", "ITEM_SETS",
    "evaluation_seed", "Budget", "BUDGETS", "DATA_VERSION", "pretrained_dir", "pretrain", "train_row", "run_seed", "combine",
    # claims, lab.md
    "CLAIMS", "PPL_TOLERANCE", "compare", "claim_checks", "lab_markdown",
    # run
    "lab",
]
