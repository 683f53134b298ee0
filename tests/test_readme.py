"""Every command the README and the docs pages show and every Makefile target names things that exist: sub-commands, flags,
shipped studies, scripts and files. A newcomer runs them as written."""
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands(pages=None):
    """The shell commands in the bash blocks of the README and the docs pages: continuation lines joined,
    comments dropped."""
    pages = pages or [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                commands.append(tokens)
    return commands


def _makefile():
    """Targets and their recipe lines, with the Makefile's own variables expanded where they are simple."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*)$", text, re.M))
    targets, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^([\w.$()/-]+):", line)
        if match and not line.startswith("\t"):
            current = match.group(1)
            targets[current] = []
        elif line.startswith("\t") and current:
            recipe = line.strip()
            for _ in range(3):
                recipe = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), recipe)
            targets[current].append(recipe)
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split()
    return targets, phony


def _subcommands():
    from rf_bench.cli import build_parser

    parser = build_parser()
    (action,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return action.choices


def _check_flags(parser, tokens, where):
    for token in tokens:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert flag in parser._option_string_actions, f"{where}: {flag} is not an option of {parser.prog}"


def _check_paths(tokens, where):
    for token in tokens:
        if re.search(r"\.(py|toml|sh)$", token) and "*" not in token:
            assert (ROOT / token).exists(), f"{where}: {token} does not exist"


def test_the_readme_shows_commands_at_all():
    commands = _readme_commands([ROOT / "README.md"])
    assert len(commands) >= 8 and commands[0][:2] == ["make", "demo"] and commands[1][:2] == ["make", "test"]
    assert len(_readme_commands()) > 40  # the docs pages show the rest


@pytest.mark.parametrize("tokens", _readme_commands(), ids=lambda t: " ".join(t)[:60])
def test_every_readme_command_names_real_things(tokens):
    from rf_bench.studies import available_studies

    where = " ".join(tokens)
    subcommands = _subcommands()
    program = tokens[0]
    if program == "make":
        targets, _ = _makefile()
        assert tokens[1] in targets, f"{where}: no Makefile target {tokens[1]}"
    elif program == "rf-bench":
        assert tokens[1] in subcommands, f"{where}: no sub-command {tokens[1]}"
        _check_flags(subcommands[tokens[1]], tokens[2:], where)
        if tokens[1] == "study":
            assert tokens[2] in available_studies(), f"{where}: no shipped study {tokens[2]}"
        _check_paths(tokens[2:], where)
    elif program == "accelerate":
        from accelerate.commands.launch import launch_command_parser

        script = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
        _check_flags(launch_command_parser(), tokens[2:script], where)
        _check_flags(subcommands["train"], tokens[script + 1:], where)  # train.py takes rf-bench train's flags
        _check_paths(tokens, where)
    elif program == "python":
        _check_paths(tokens[1:2], where)
        if tokens[1] == "hub_upload.py":
            _check_flags(subcommands["publish"], tokens[2:], where)
    elif program == "bash":  # a shell script of the repo: it exists and parses the flags shown
        _check_paths(tokens[1:2], where)
        script = (ROOT / tokens[1]).read_text()
        for flag in (t for t in tokens[2:] if t.startswith("--")):
            assert f"{flag})" in script, f"{where}: {tokens[1]} does not take {flag}"
    elif tokens[:3] == ["python3", "-m", "pip"]:
        assert tokens[3] in ("install", "download"), where
    else:
        pytest.fail(f"{where}: the README shows a command this test does not know how to check")


def test_every_makefile_target_is_phony_and_names_files_that_exist():
    targets, phony = _makefile()
    for target in ("install", "demo", "test", "test-slow", "bench", "clean"):
        assert target in targets and target in phony
    for target, recipe in targets.items():
        for line in recipe:
            _check_paths(shlex.split(line), f"make {target}")
    assert any("benchmarks/run_all.py" in line for line in targets["bench"])
