"""Studies shipped with rf-bench: sweep files (``<name>.toml``) that ``rf-bench study <name>`` runs."""
from __future__ import annotations

from importlib import resources
from typing import List

__all__ = ["available_studies", "study_text"]


def available_studies() -> List[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def study_text(name: str) -> str:
    """The sweep file of a shipped study; a one-line error names the studies there are."""
    if name not in available_studies():
        raise ValueError(f"unknown study {name!r}; choose one of {', '.join(available_studies())}")
    return resources.files(__name__).joinpath(f"{name}.toml").read_text()
