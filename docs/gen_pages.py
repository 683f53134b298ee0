"""Pages generated at build time (mkdocs-gen-files): the API reference, the CLI reference and the changelog."""
import os
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]

# The modules the API reference shows, in reading order: (module, what it is for).
API_MODULES = [
    ("rf_bench.rf", "receptive fields: analytic and measured"),
    ("rf_bench.models", "the rfpool model families, registered in timm"),
    ("rf_bench.data", "data sets, the cache and the on-device loader"),
    ("rf_bench.recipes", "training configurations and recipes"),
    ("rf_bench.train", "training entry point"),
    ("rf_bench.trainer", "the trainer"),
    ("rf_bench.capture", "the captured (CUDA-graph) training step"),
    ("rf_bench.pruning", "pruning masks"),
    ("rf_bench.probes.base", "the probe protocol and the suite harness"),
    ("rf_bench.probes.prune", "probe: magnitude pruning"),
    ("rf_bench.probes.hessian", "probe: Hessian spectrum, trace and density"),
    ("rf_bench.probes.cka", "probe: CKA"),
    ("rf_bench.probes.rfmap", "probe: RF maps"),
    ("rf_bench.claims", "verdicts on the paper's claims"),
    ("rf_bench.report", "REPORT.md, CSVs and figures"),
    ("rf_bench.results", "run directories and the result store"),
    ("rf_bench.sweep", "grids of runs"),
    ("rf_bench.studies", "shipped studies"),
    ("rf_bench.hub", "publishing to the Hugging Face Hub"),
    ("rf_bench.checkpoints", "published checkpoints and safe loading"),
]


def api_pages() -> None:
    lines = ["# Python API", "", "Generated from the docstrings.", "", "| module | for |", "|---|---|"]
    for module, purpose in API_MODULES:
        with mkdocs_gen_files.open(f"reference/api/{module}.md", "w") as f:
            f.write(f"::: {module}\n")
        lines.append(f"| [`{module}`]({module}.md) | {purpose} |")
    with mkdocs_gen_files.open("reference/api/index.md", "w") as f:
        f.write("\n".join(lines) + "\n")


def cli_page() -> None:
    os.environ["COLUMNS"] = "100"  # argparse wraps help to this width
    from rf_bench.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    parts = ["# Command line", "", "Generated from `rf-bench`'s argument parser: every sub-command and its options.",
             "", "```text", parser.format_help().rstrip(), "```"]
    for name, command in sub.choices.items():
        parts += ["", f"## `rf-bench {name}`", "", "```text", command.format_help().rstrip(), "```"]
    with mkdocs_gen_files.open("reference/cli.md", "w") as f:
        f.write("\n".join(parts) + "\n")


def changelog_page() -> None:
    with mkdocs_gen_files.open("changelog.md", "w") as f:
        f.write((ROOT / "CHANGELOG.md").read_text())


api_pages()
cli_page()
changelog_page()
