"""The one console script: every subcommand is listed and dispatches to its stage."""

import subprocess
import sys

import pytest

from edufilter import cli

SUBCOMMANDS = ["label", "train", "evaluate", "score", "select", "serve", "pretrain", "demo"]


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "edufilter", "--help"], capture_output=True, text=True, check=True).stdout
    for name in SUBCOMMANDS:
        assert name in out


def test_console_script_is_installed():
    import shutil
    from pathlib import Path

    exe = shutil.which("edufilter") or str(Path(sys.executable).parent / "edufilter")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("edufilter ")


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_its_own_help(name):
    proc = subprocess.run([sys.executable, "-m", "edufilter", name, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"edufilter {name}" in proc.stdout


def test_unknown_subcommand_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "edufilter", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_missing_stage_module_says_not_implemented(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "demo", ("edufilter.no_such_stage:main", "x"))
    assert cli.main(["demo"]) == cli.NOT_IMPLEMENTED
    assert "not implemented yet" in capsys.readouterr().err
