"""Pages generated at build time (mkdocs-gen-files): the API reference, the CLI reference and the changelog."""
import argparse
import os
import re
import textwrap
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
    ("rf_bench.batchnorm", "BatchNorm statistics protocols: stored, recalibrated"),
    ("rf_bench.spectral", "Hessian-vector products, Lanczos, Hutchinson and SLQ"),
    ("rf_bench.claims", "verdicts on the paper's claims"),
    ("rf_bench.report", "REPORT.md: the sections every probe renders, assembled"),
    ("rf_bench.reporting", "tables, figures and statistics the reports share"),
    ("rf_bench.runs", "the run directory: its files, reading a finished run"),
    ("rf_bench.files", "the atomic write and the stable hash"),
    ("rf_bench.evaluation", "test loss and accuracy"),
    ("rf_bench.results", "reading runs and the result store"),
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
    """One section per sub-command: what it does, its usage, a table of its arguments, its example."""
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to this width
    from rf_bench.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    purposes = {action.dest: action.help for action in sub._choices_actions}
    parts = ["# Command line", "", "Generated from `rf-bench`'s argument parser. `rf-bench COMMAND --help` prints the "
             "same in the terminal.", "", "| command | what it does |", "|---|---|"]
    parts += [f"| [`rf-bench {name}`](#rf-bench-{name}) | {_cell(purposes.get(name, ''))} |" for name in sub.choices]
    for name, command in sub.choices.items():
        parts += ["", f"## rf-bench {name}", "", _paragraph(command.description or purposes.get(name, "")), "",
                  "```text", _usage(command), "```", ""]
        parts += _argument_table(command)
        if command.epilog:
            parts += ["", "```bash", _dedent_example(command.epilog), "```"]
    with mkdocs_gen_files.open("reference/cli.md", "w") as f:
        f.write("\n".join(parts) + "\n")


def _argument_table(command: argparse.ArgumentParser) -> list:
    formatter = command._get_formatter()
    rows = ["| argument | default | meaning |", "|---|---|---|"]
    for action in command._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.option_strings and action.nargs != 0:
            names += f" `{formatter._format_args(action, action.dest.upper())}`"
        meaning = formatter._expand_help(action) if action.help else ""
        if action.default is not None:  # the default column says it
            meaning = re.sub(r"\s*\(default: [^()]*(\([^()]*\)[^()]*)*\)", "", meaning)
        if action.choices is not None and action.metavar is not None:  # else the usage names them: {a,b}
            shown = ", ".join(f"`{choice}`" for choice in action.choices)
            meaning = f"{meaning} (one of {shown})" if meaning else f"one of {shown}"
        rows.append(f"| {names} | {_default(action)} | {_cell(meaning)} |")
    return rows


def _usage(command: argparse.ArgumentParser) -> str:
    """argparse's usage without its ``usage:`` label, continuation lines dedented by the label's width."""
    first, *rest = command.format_usage().rstrip().splitlines()
    return "\n".join([first.removeprefix("usage: ")] + [line[len("usage: "):] for line in rest])


def _default(action: argparse.Action) -> str:
    if action.default in (None, False, [], argparse.SUPPRESS) or action.nargs == 0:
        return "-"
    shown = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
    return f"`{shown}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _paragraph(text: str) -> str:
    return " ".join(text.split())


def _dedent_example(epilog: str, width: int = 100) -> str:
    """The epilog's command lines; one wider than ``width`` continues on the next line before an option."""
    lines = textwrap.dedent("\n".join(line for line in epilog.splitlines()
                                      if line.strip() and not line.rstrip().endswith(":"))).splitlines()
    wrapped = []
    for line in lines:
        while len(line) > width and " --" in line[:width]:
            cut = line.rindex(" --", 0, width - 2)
            wrapped.append(line[:cut] + " \\")
            line = "    " + line[cut + 1:]
        wrapped.append(line)
    return "\n".join(wrapped)


def changelog_page() -> None:
    with mkdocs_gen_files.open("changelog.md", "w") as f:
        f.write((ROOT / "CHANGELOG.md").read_text())


api_pages()
cli_page()
changelog_page()
