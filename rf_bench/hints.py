"""The one "did you mean" of rf-bench: the nearest names to a mistyped one, for every error that names choices."""
from __future__ import annotations

import difflib
from typing import Iterable, List

__all__ = ["nearest", "nearest_hint"]


def nearest(name: str, choices: Iterable[str], n: int = 1, cutoff: float = 0.5) -> List[str]:
    """Up to ``n`` of ``choices`` closest to ``name`` (difflib's ratio at least ``cutoff``), closest first."""
    return difflib.get_close_matches(name, sorted(choices), n=n, cutoff=cutoff)


def nearest_hint(name: str, choices: Iterable[str]) -> str:
    """``did you mean 'x'?`` for the closest choice, else the list of choices."""
    choices = sorted(choices)
    close = nearest(name, choices)
    return f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(choices) or 'none'}"
