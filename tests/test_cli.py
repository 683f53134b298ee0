"""The `rf-bench` command line."""
import subprocess
import sys

from rf_bench.cli import main


def test_rf_family_table(capsys):
    assert main(["rf", "--family", "resnet50_rfpool", "--ks", "1", "2", "--width-mult", "0.125"]) == 0
    out = capsys.readouterr().out
    for line_start, analytic, paper in (("│ 1", "107", "110"), ("│ 2", "212", "213")):
        row = next(line for line in out.splitlines() if line.startswith(line_start))
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells[1] == analytic and cells[2] == analytic and cells[3] == paper


def test_rf_per_layer_table_any_timm_model(capsys):
    assert main(["rf", "resnet18", "--input-size", "3", "64", "64", "--all-layers"]) == 0
    out = capsys.readouterr().out
    assert "layer4.1.act2" in out and "RF 435 px, jump 32" in out


def _run(*args):
    return subprocess.run([sys.executable, "-m", "rf_bench.cli", *args], capture_output=True, text=True)


def test_unknown_model_is_one_line_with_suggestions():
    proc = _run("rf", "resnet50_rfpol3")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown model 'resnet50_rfpol3'" in proc.stderr and "resnet50_rfpool3" in proc.stderr


def test_too_large_k_is_one_line():
    default = _run("rf", "vgg19_rfpool5", "--width-mult", "0.125")  # the cfg's own input size (40x40) fits
    assert default.returncode == 0, default.stderr
    proc = _run("rf", "vgg19_rfpool5", "--width-mult", "0.125", "--input-size", "3", "32", "32")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "use k <= 4" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_every_help_shows_the_defaults():
    import argparse

    from rf_bench.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            shown = action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings
            if shown:
                assert f"default: {action.default}" in text or "default" in (action.help or ""), (name, action.dest)
    train_help = " ".join(sub.choices["train"].format_help().split())
    assert "(default: fast)" in train_help and "(default: runs)" in train_help


def test_help_texts_name_no_durations():
    import re

    from rf_bench.cli import build_parser

    parser = build_parser()
    texts = [parser.format_help()] + [c.format_help() for c in parser._subparsers._group_actions[0].choices.values()]
    for text in texts:
        assert not re.search(r"\b\d+\s*(s|min|minutes?|seconds?|hours?)\b|about a minute", text), text


def test_rf_of_a_deep_net_is_one_row_per_block_with_the_global_context_note(capsys):
    assert main(["rf", "efficientnet_b0"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert 10 <= len(rows) <= 40 and "at the end of each block" in " ".join(out.split())
    assert "RF 851 px, jump 32" in out and "global-context gates" in " ".join(out.split())
    assert main(["rf", "efficientnet_b0", "--all-layers"]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("│")]) > 100


def test_sweep_takes_jobs_as_study_and_demo_do():
    from rf_bench.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["sweep", "grid.toml", "--jobs", "3"]).max_parallel == 3
    assert parser.parse_args(["sweep", "grid.toml", "--max-parallel", "2"]).max_parallel == 2
