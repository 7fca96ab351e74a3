"""The ``lnassist`` command line: help everywhere, errors as one line and exit code 2."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from lnassist.__main__ import build_parser, main


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def test_top_level_help_runs_as_module():
    proc = subprocess.run([sys.executable, "-m", "lnassist", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for name in _subcommands():
        assert name in proc.stdout


def test_console_script_is_installed():
    proc = subprocess.run(
        [str(__import__("pathlib").Path(sys.executable).with_name("lnassist")), "--version"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("lnassist ")


@pytest.mark.parametrize("name", _subcommands())
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: lnassist " + name in capsys.readouterr().out


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
