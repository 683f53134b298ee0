"""What an install of rf-bench takes on disk: the installed distributions of this environment, measured.

Sums the files each installed distribution lists (its ``RECORD``) and groups them: PyTorch, NVIDIA's CUDA
libraries (PyPI's torch wheel for x86_64 depends on them even on a machine without a GPU), Triton, and everything
else. Run it in the environment ``make install`` made:

    .venv/bin/python benchmarks/install_size.py            # results/install_size.{json,md}
"""
from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

GROUPS = (("PyTorch (torch, torchvision)", ("torch", "torchvision")), ("NVIDIA CUDA libraries", ("nvidia-",)),
          ("Triton", ("triton",)))


def distribution_sizes() -> Dict[str, int]:
    """Bytes on disk of each installed distribution's files (editable installs: their metadata only)."""
    sizes: Dict[str, int] = {}
    for dist in metadata.distributions():
        total = 0
        for file in dist.files or ():
            path = Path(dist.locate_file(file))
            if path.is_file():
                total += path.stat().st_size
        name = dist.metadata["Name"].lower().replace("_", "-")
        sizes[name] = sizes.get(name, 0) + total
    return sizes


def group_of(name: str) -> str:
    for label, prefixes in GROUPS:
        if any(name == p or (p.endswith("-") and name.startswith(p)) for p in prefixes):
            return label
    return "everything else"


def markdown(rows: List[Dict], meta: Dict) -> str:
    total = sum(r["bytes"] for r in rows)
    lines = [f"# Install size ({meta['distributions']} distributions, {total / 1e9:.1f} GB)", "",
             "| part | distributions | size |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['group']} | {r['count']} | {r['bytes'] / 1e9:.2f} GB |")
    lines += ["", "In the environment `make install` makes (rf-bench with its `dev` and `docs` extras)."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="results folder")
    args = parser.parse_args(argv)
    sizes = distribution_sizes()
    grouped: Dict[str, Dict] = {}
    for name, size in sizes.items():
        row = grouped.setdefault(group_of(name), dict(group=group_of(name), count=0, bytes=0))
        row["count"] += 1
        row["bytes"] += size
    order = [label for label, _ in GROUPS] + ["everything else"]
    rows = [grouped[label] for label in order if label in grouped]
    meta = dict(distributions=len(sizes))
    text = markdown(rows, meta)
    write_result("install_size", dict(meta=meta, rows=rows, distributions=sizes), text, Path(args.out))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
