"""The rooms table: each top-level part of `mmpretrain` imports only the rooms its row allows.

Read from the source with `ast`, so nothing is imported. A room is a top-level subpackage or module of
`mmpretrain/` (``mmpretrain/video/io/decoding.py`` is in room ``video``), so files moving inside a room keep the table.
Imports under ``if TYPE_CHECKING:`` are type-only: they must be listed in the row's type-only column, never used at
run time. Imports inside functions (lazy ones) count as run-time imports. The same table, as prose, is
docs/architecture.md's; a test holds the two equal.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmpretrain"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

#: rooms every room may import: the project's errors, its atomic-file helpers, and the version string
BASE = frozenset({"errors", "_io", "__version__"})


@dataclass(frozen=True)
class Room:
    """One row: the rooms ``may`` (at run time) and ``type_only`` (under TYPE_CHECKING) import."""

    may: frozenset[str] = frozenset()
    type_only: frozenset[str] = frozenset()


def _room(may: str = "", type_only: str = "") -> Room:
    return Room(frozenset(may.split()), frozenset(type_only.split()))


EVERYTHING = "hub models data training embeddings encoders extraction ssl video fewshot retrieval recsys callbacks"

#: the rooms table (docs/architecture.md); "*" rows may import every room but the ones they leave out
ROOMS: dict[str, Room] = {
    "__init__": _room(type_only="encoders hub"),  # the public API, imported on first use
    "__main__": _room("cli"),
    "make_shards": _room("data video"),  # the mmpretrain-shards console script
    "cli": _room(EVERYTHING + " serve conf"),
    "serve": _room(EVERYTHING),
    "hub": _room("models"),
    "encoders": _room("hub models data video"),
    "embeddings": _room(),
    "extraction": _room("encoders embeddings data video"),
    "training": _room(),
    "callbacks": _room("training models"),
    "data": _room("models"),
    "models": _room(),
    "ssl": _room("models data training"),
    "video": _room("models data training hub embeddings retrieval", type_only="encoders"),
    "fewshot": _room("embeddings data encoders hub"),
    "retrieval": _room("embeddings"),
    "recsys": _room("embeddings retrieval"),
}

#: modules that belong to another room's row while they are being merged into it
ALIASES = {"shard_extraction": "extraction"}

#: names the package root exports, by the room that defines them (``from mmpretrain import load_encoder``)
PUBLIC_API = {"load_encoder": "encoders", "list_pretrained": "hub", "__version__": "__version__"}

#: rooms above the layers: entry points and the public API
ENTRY_POINTS = {"__init__", "__main__", "cli", "serve", "make_shards"}

#: third-party packages only some rooms may import: the configuration system stays in the entry points, FAISS in
#: retrieval, video decoders in video
EXTERNAL = {
    "hydra": {"cli", "conf"},
    "omegaconf": {"cli", "conf"},
    "faiss": {"retrieval"},
    "decord": {"video"},
    "av": {"video"},
}


@dataclass(frozen=True)
class Import:
    path: str
    line: int
    target: str  # a room of mmpretrain, or a third-party top-level package
    internal: bool
    type_only: bool


def room_of(path: Path) -> str:
    """``mmpretrain/video/io/decoding.py`` -> ``video``; ``mmpretrain/encoders.py`` -> ``encoders``."""
    first = path.relative_to(PACKAGE).parts[0]
    name = first.removesuffix(".py")
    return ALIASES.get(name, name)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (``typing.TYPE_CHECKING`` too)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _targets(node: ast.Import | ast.ImportFrom) -> list[tuple[str, bool]]:
    """(target, internal) of one import statement; relative imports stay inside their package."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif node.level or not node.module:
        return []
    elif node.module == "mmpretrain":  # from mmpretrain import ssl, load_encoder, __version__
        names = [f"mmpretrain.{PUBLIC_API.get(alias.name, alias.name)}" for alias in node.names]
    else:
        names = [node.module]
    out = []
    for name in names:
        parts = name.split(".")
        if parts[0] == "mmpretrain" and len(parts) > 1:
            out.append((ALIASES.get(parts[1], parts[1]), True))
        elif parts[0] != "mmpretrain":
            out.append((parts[0], False))
    return out


def imports_of(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only = _type_checking_lines(tree)
    rel = str(path.relative_to(ROOT))
    return [
        Import(rel, node.lineno, target, internal, node.lineno in type_only)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for target, internal in _targets(node)
    ]


def violations(path: Path) -> list[str]:
    """Each import of ``path`` its room's row does not allow, as ``file:line: why``."""
    room = room_of(path)
    row = ROOMS[room]
    problems = []
    for imp in imports_of(path):
        where = f"{imp.path}:{imp.line}"
        if not imp.internal:
            rooms = EXTERNAL.get(imp.target)
            if rooms is not None and room not in rooms:
                problems.append(f"{where}: {room} imports {imp.target}, which only {sorted(rooms)} may")
            continue
        if imp.target == room or imp.target in BASE or imp.target in row.may:
            continue
        if imp.type_only and imp.target in row.type_only:
            continue
        hint = " at run time (its row allows it under TYPE_CHECKING only)" if imp.target in row.type_only else ""
        problems.append(f"{where}: {room} imports {imp.target}{hint}; its row allows {sorted(row.may) or 'none'}")
    return problems


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_room() -> None:
    rooms = {room_of(path) for path in SOURCES}
    missing = sorted(rooms - set(ROOMS) - BASE)
    assert not missing, f"mmpretrain/{missing[0]} is in no room: add its row to ROOMS and docs/architecture.md"


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_module_imports_only_what_its_room_allows(path: Path) -> None:
    if room_of(path) in BASE:
        assert all(not imp.internal or imp.target in BASE for imp in imports_of(path)), "base modules import no room"
        return
    assert violations(path) == []


def test_the_table_has_no_cycle_and_names_only_rooms() -> None:
    """Run-time arrows only go down: no two rooms import each other, directly or through others."""
    known = set(ROOMS) | {"conf"}
    for room, row in ROOMS.items():
        assert row.may | row.type_only <= known, f"{room}: unknown rooms {sorted((row.may | row.type_only) - known)}"
    state: dict[str, str] = {}

    def visit(room: str, trail: list[str]) -> None:
        if state.get(room) == "done" or room not in ROOMS:
            return
        assert state.get(room) != "open", f"cycle in the rooms table: {' -> '.join([*trail, room])}"
        state[room] = "open"
        for below in sorted(ROOMS[room].may):
            visit(below, [*trail, room])
        state[room] = "done"

    for room in ROOMS:
        visit(room, [])


def test_the_checker_catches_forbidden_type_only_and_external_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checker itself: a forbidden import, a type-only one used at run time, a lazy one, and faiss elsewhere."""
    package = tmp_path / "mmpretrain"
    (package / "retrieval").mkdir(parents=True)
    source = package / "retrieval" / "bad.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import faiss\n"
        "from mmpretrain.embeddings import open_store\n"
        "from mmpretrain.errors import ConfigError\n"
        "if TYPE_CHECKING:\n"
        "    from mmpretrain.encoders import ImageEncoder\n"
        "def f():\n"
        "    from mmpretrain import video\n"
    )
    (package / "models.py").write_text("import faiss\nfrom mmpretrain.video import x\n")
    monkeypatch.setitem(globals(), "PACKAGE", package)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert violations(source) == [
        "mmpretrain/retrieval/bad.py:6: retrieval imports encoders; its row allows ['embeddings']",
        "mmpretrain/retrieval/bad.py:8: retrieval imports video; its row allows ['embeddings']",
    ]
    assert violations(package / "models.py") == [
        "mmpretrain/models.py:1: models imports faiss, which only ['retrieval'] may",
        "mmpretrain/models.py:2: models imports video; its row allows none",
    ]
    monkeypatch.setitem(ROOMS, "retrieval", _room("embeddings", type_only="encoders"))
    assert violations(source) == [
        "mmpretrain/retrieval/bad.py:8: retrieval imports video; its row allows ['embeddings']"
    ]
    (package / "retrieval" / "late.py").write_text("from mmpretrain.encoders import x\n")
    assert violations(package / "retrieval" / "late.py") == [
        "mmpretrain/retrieval/late.py:1: retrieval imports encoders at run time (its row allows it under "
        "TYPE_CHECKING only); its row allows ['embeddings']"
    ]


def _doc_rows() -> dict[str, tuple[set[str], set[str]]]:
    """``room -> (may, type_only)`` from the table in docs/architecture.md.

    A row's first cell names the room (`` `mmpretrain/hub/` ``, `` `mmpretrain/encoders.py` ``), its last cell the
    rooms it may import in backticks; a room followed by "(type-only)" is a TYPE_CHECKING permission.
    """
    rows = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`mmpretrain/([\w]+)(?:/|\.py)?`", cells[0]) if len(cells) >= 3 else None
        if not match:
            continue
        last = cells[-1]
        type_only = set(re.findall(r"`(\w+)` \(type-only\)", last))
        may = set(re.findall(r"`(\w+)`", last)) - type_only
        rows[match.group(1)] = (may, type_only)
    return rows


def test_the_architecture_page_shows_this_table() -> None:
    rows = _doc_rows()
    only_page, only_test = sorted(set(rows) - set(ROOMS)), sorted(set(ROOMS) - set(rows))
    assert not only_page and not only_test, f"rooms only in docs/architecture.md: {only_page}, only here: {only_test}"
    for room, row in ROOMS.items():
        assert rows[room] == (set(row.may), set(row.type_only)), f"docs/architecture.md row of {room}"


def test_the_layers_picture_agrees_with_the_table() -> None:
    """Each room of docs/architecture.md's layer picture imports (at run time) only rooms of lower layers."""
    layer = {}
    for line in ARCHITECTURE.read_text().splitlines():
        match = re.match(r"^ layer (\d)\s+(.*)$", line)
        if match:
            layer.update(dict.fromkeys(match.group(2).split(), int(match.group(1))))
    pictured = set(ROOMS) - ENTRY_POINTS
    assert set(layer) == pictured, f"rooms missing from the picture: {sorted(pictured - set(layer))}"
    for room, level in layer.items():
        for below in ROOMS[room].may:
            assert layer[below] < level, f"{room} (layer {level}) imports {below} (layer {layer[below]})"
