"""The architecture rules the project holds to, checked in fresh interpreters."""

import subprocess
import sys

import pytest

FORBIDDEN_IN_CORE = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout
    return set(out.split())


def test_core_imports_no_qt_or_napari():
    code = "import pkgutil, importlib, napari_hybridseg.core as c\n" \
           "[importlib.import_module(m.name) for m in pkgutil.walk_packages(c.__path__, 'napari_hybridseg.core.')]"
    mods = _modules_after(code)
    leaked = sorted(m for m in mods if m.split(".")[0] in FORBIDDEN_IN_CORE)
    assert not leaked, f"napari_hybridseg.core imported {leaked}"


def test_cli_help_does_not_import_torch():
    mods = _modules_after("from napari_hybridseg.cli import build_parser; build_parser()")
    assert "torch" not in mods


@pytest.mark.parametrize("module", ["napari_hybridseg.widgets"])
def test_widget_package_imports_without_torch(module):
    mods = _modules_after(f"import {module}")
    assert "torch" not in mods
