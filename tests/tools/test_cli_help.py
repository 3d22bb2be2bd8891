"""The command line explains itself: every subcommand has a description and an example under --help,
every option its help (with its default where it has one), `dvflnet --version` exists, and errors
name the flag the user typed."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from dvflnet import __version__
from dvflnet.cli import build_parser, main

PARSER = build_parser()
COMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_description_an_example_and_help_for_every_option(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    parser = COMMANDS[name]
    assert parser.description and parser.description in " ".join(text.split()) or parser.description[:40] in text
    assert f"example:\n  dvflnet {name}" in text
    undocumented = [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
                    if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not undocumented, f"dvflnet {name}: options without help: {undocumented}"
    formatter = parser.formatter_class(prog=parser.prog)
    for action in parser._actions:  # a default worth showing is shown
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS, []) \
                and not isinstance(action, argparse._HelpAction):
            assert "default" in formatter._get_help_string(action), f"dvflnet {name} {action.option_strings[-1]}: default not shown"


def test_version():
    out = subprocess.run([sys.executable, "-m", "dvflnet.cli", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"dvflnet {__version__} (torch ")


@pytest.mark.parametrize("args,flag", [
    (["--frames", "-3"], "--frames"),
    (["--frames", "1"], "--frames"),
    (["--size", "20"], "--size"),
    (["--direction-spread", "90"], "--direction-spread"),
], ids=["frames-negative", "frames-one", "size", "direction-spread"])
def test_generate_data_errors_name_the_flag(tmp_path, capsys, args, flag):
    try:
        code = main(["generate-data", str(tmp_path / "data"), *args])
    except SystemExit as stop:  # refused by the argument parser
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert flag in err and "num_frames" not in err and "direction_spread" not in err, err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("command", ["train", "distill"])
def test_a_values_check_does_not_depend_on_the_command(tmp_path, capsys, command):
    config = tmp_path / "run.yaml"
    config.write_text("model: {name: vfl_net_nano}\ndata: {num_classes: 4}\nteacher: {name: vfl_net_nano, checkpoint: t.pt}\n")
    assert main([command, "--config", str(config), "--output", str(tmp_path / "run"), "--opts", "kd.temperature", "200"]) == 2
    assert "kd.temperature" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_prepares_labels_csv_has_the_header_generate_data_writes(tmp_path):
    from dvflnet.data.synthetic import generate_dataset
    from dvflnet.tools.prepare import Prepared, write_csvs

    paths = write_csvs(Prepared(["a", "b"], [("a/1.mp4", 0)], [("b/2.mp4", 1)]), str(tmp_path / "prepared"))
    generated = generate_dataset(tmp_path / "generated", 1, 1, 2, 16, classes=("move_left", "move_right"))
    for path in (paths["labels"], generated.labels_csv):
        assert open(path).readline().strip() == "id,name"


def test_bench_scripts_answer_help_without_running():
    import os

    bench = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "teacher_cache_fold.py")
    result = subprocess.run([sys.executable, bench, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage:" in result.stdout and "| classes |" not in result.stdout


def test_the_examples_name_files_that_exist():
    import os
    import re

    from dvflnet.cli import EXAMPLES

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    for name, example in EXAMPLES.items():
        assert name in COMMANDS, f"an example for an unknown command: {name}"
        for path in re.findall(r"configs/\S+\.yaml", example):
            assert os.path.isfile(os.path.join(root, path)), f"dvflnet {name}'s example: {path}"
    assert set(EXAMPLES) == set(COMMANDS)
