"""Long-context evaluation: perplexity vs length and retrieval tasks, scored the same way for every method."""

from .passkey import run_passkey
from .perplexity import run_perplexity

__all__ = ["run_passkey", "run_perplexity"]
