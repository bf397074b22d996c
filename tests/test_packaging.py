"""The wheel holds every subpackage: pyproject's explicit package list names each folder with an `__init__.py`,
so a module moved into a new subpackage cannot go missing after `pip install`."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_ships_in_the_wheel() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "mmpretrain").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"


def test_no_formatter_markers() -> None:
    """The project uses no code formatter (docs/development.md), so no file carries a formatter's markers."""
    files = [p for folder in ("mmpretrain", "scripts", "tests") for p in (ROOT / folder).rglob("*.py")]
    marked = [str(p.relative_to(ROOT)) for p in files if "# fmt: " + "skip" in p.read_text(encoding="utf-8")]
    assert not marked, f"formatter markers in {marked}"
