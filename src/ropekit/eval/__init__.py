"""Long-context evaluation: every task is a registered plug-in (``ropekit.eval.tasks.TASKS``) scored the same way for
every model and method; :func:`ropekit.eval.runner.evaluate` runs tasks × lengths with a resumable cache."""

from . import entropy, longbench, niah, passkey, passkey_ppl, perplexity, retrieval, ruler  # noqa: F401  (register the tasks)
from .passkey import run_passkey
from .perplexity import run_perplexity
from .tasks import TASKS, get_task

__all__ = ["TASKS", "get_task", "run_passkey", "run_perplexity"]
