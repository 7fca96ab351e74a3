"""The ``lnassist`` command line: help everywhere, errors as one line and exit code 2; the shared
argument types; library modules independent of the command modules."""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lnassist
from lnassist.commands import build_parser, main
from lnassist.commands.args import device
from lnassist.devices import DeviceError, resolve_device

SUBCOMMANDS = (
    "info", "synth", "synth-dataset", "detect", "train-detector", "evaluate-detector", "train-classifier",
    "retrain", "pretrain-cells", "evaluate", "collect", "models", "publish-model", "analyze", "demo",
)


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def test_top_level_help_runs_as_module():
    assert _subcommands() == sorted(SUBCOMMANDS)
    proc = subprocess.run([sys.executable, "-m", "lnassist", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    commands = proc.stdout.split("\n  COMMAND\n", 1)[1].split("\n\n", 1)[0]
    assert re.findall(r"^    (\S+)", commands, re.MULTILINE) == list(SUBCOMMANDS)


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


def _imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_library_modules_do_not_import_commands():
    package = Path(lnassist.__file__).parent
    commands = package / "commands"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        # __main__ is `python -m lnassist`: the command line itself.
        if commands in path.parents or path == package / "__main__.py":
            continue
        imported = _imported_modules(ast.parse(path.read_text(), str(path)))
        if any(m == "lnassist.commands" or m.startswith("lnassist.commands.") for m in imported):
            offenders.append(str(path.relative_to(package.parent)))
    assert offenders == []


def test_device_names():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(DeviceError, match="unknown device 'gpu0'") as exc:
        resolve_device("gpu0")
    assert "\n" not in str(exc.value)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown device"):
        device("gpu0")


def test_unusable_cuda_device():
    import torch

    if torch.cuda.is_available():
        with pytest.raises(DeviceError, match=r"GPU\(s\)"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(DeviceError, match="no usable GPU"):
            resolve_device("cuda")


def test_bad_device_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "r"), "--device", "gpu0"])
    assert exc.value.code == 2
    assert "argument --device: unknown device 'gpu0'" in capsys.readouterr().err
