"""Token lengths as users write them: ``32k``, ``32K``, ``32768``, ``1.5k``, ``1m``."""

from __future__ import annotations

import re

from .errors import RopekitError

_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_length(value: int | str, what: str = "length") -> int:
    """Parse ``"32k"`` → 32768, ``"32768"`` → 32768, ``"1m"`` → 1048576. ``k`` means 1024."""
    if isinstance(value, bool):
        raise RopekitError(f"{what} must be a token count, got {value!r}", "write e.g. 32k or 32768")
    if isinstance(value, int):
        number = value
    else:
        match = _LENGTH.match(str(value))
        if not match:
            raise RopekitError(f"{what} {value!r} is not a length", "write e.g. 32k, 32K or 32768")
        scale = {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
        number_f = float(match.group(1)) * scale
        if number_f != int(number_f):
            raise RopekitError(f"{what} {value!r} is not a whole number of tokens", "write e.g. 32k or 32768")
        number = int(number_f)
    if number <= 0:
        raise RopekitError(f"{what} must be positive, got {value!r}", "write e.g. 32k or 32768")
    return number


def parse_lengths(value: str | list, what: str = "lengths") -> list[int]:
    """Parse ``"4k,8k,16k"`` (or a list) into sorted, distinct token counts."""
    items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v.strip()]
    if not items:
        raise RopekitError(f"no {what} given", "write e.g. 4k,8k,16k")
    return sorted({parse_length(v, what) for v in items})


def format_length(n: int) -> str:
    """32768 → ``"32K"``, 12288 → ``"12K"``, 1000 → ``"1000"``."""
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)
