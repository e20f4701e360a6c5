"""The natural texts evaluation reads live in :mod:`ropekit.corpus` (the entropy probe of ``layers=entropy`` and
training read them too); this module keeps the ``ropekit.eval.corpus`` names importable."""

from ..corpus import NAMED, _clean, natural_text, shakespeare_files, text_tokens  # noqa: F401
