"""Every `mmpretrain-*` command line in README.md and docs/*.md composes with the shipped configs (paths aside), and
every line of a command with its own parser parses: no document can name a key, group option or flag the project
does not have. `python scripts/<x>.py` lines name scripts that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGS = {"mmpretrain-train": "train.yaml", "mmpretrain-eval": "eval.yaml", "mmpretrain-extract": "extract.yaml",
           "mmpretrain-index": "index.yaml", "mmpretrain-export": "export.yaml", "mmpretrain-fewshot": "fewshot.yaml"}
SUBCOMMANDS = {"mmpretrain-index": ("build", "search", "eval"),
               "mmpretrain-fewshot": ("fit", "predict", "estimate", "suggest", "export")}
GENERIC = {"...", "key=value", "[key=value", "...]"}  # a usage line's words for "any keys"
GROUPS = {"experiment", "task", "trainer", "logger", "callbacks", "debug", "hparams_search", "data", "model"}
FLAGS = {"mmpretrain-index": {"--text": "text", "--query": "query"}}


def document_commands(document: Path) -> list[tuple[int, list[str]]]:
    """(line number, tokens) of each command in a document's shell blocks, continuation lines joined, comments cut."""
    commands, block, pending, start = [], False, "", 0
    for number, line in enumerate(document.read_text().splitlines(), start=1):
        if line.startswith("```"):
            block = line.strip() in ("```bash", "```sh", "```shell")
            continue
        if not block:  # inline `mmpretrain-x key=value ...` spans in the prose are command lines too
            for span in re.findall(r"`(mmpretrain-[a-z]+ [^`]*=[^`]*)`", line):
                commands.append((number, shlex.split(re.sub(r"<[^<>]*>", "<placeholder>", span))))
            continue
        text = line.split("  #", 1)[0].strip()
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        text, pending = pending + text, ""
        text = re.sub(r"<[^<>]*>", "<placeholder>", text)  # `<video ckpt>` is one placeholder, not two arguments
        for part in re.split(r"&&|;", text):
            tokens = shlex.split(part.strip())
            if tokens and (tokens[0].startswith("mmpretrain-") or tokens[:1] == ["python"]):
                commands.append((start, tokens))
    return commands


def _override(token: str) -> str | None:
    """A README argument as a Hydra override: optional `[k=v]` unwrapped, placeholders (`<...>`, `...`) quoted."""
    token = token[1:-1] if token.startswith("[") and token.endswith("]") and "=" in token else token
    if token.startswith("~"):  # Hydra's delete override: `~model.backbone_kwargs`
        return token
    if "=" not in token:
        return None
    key, value = token.split("=", 1)
    if "<" in value or "..." in value or "|" in value:
        value = "'placeholder'"
    return f"{key}={value}"


COMMANDS = [(doc.relative_to(ROOT).as_posix(), line, tokens) for doc in DOCUMENTS
            for line, tokens in document_commands(doc)]


def _console_scripts() -> set[str]:
    import tomllib

    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def test_the_readme_shows_every_console_script() -> None:
    assert {tokens[0] for doc, _, tokens in COMMANDS if doc == "README.md"} >= _console_scripts()


@pytest.mark.parametrize(("doc", "line", "tokens"), COMMANDS, ids=[f"{d}:{n}" for d, n, _ in COMMANDS])
def test_documented_command_composes(doc: str, line: int, tokens: list[str]) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from mmpretrain.cli import hub
    from mmpretrain.cli.quoting import quote_data_values, take_flags

    # a usage line's `build|search|eval` stands for each subcommand: the first one is checked
    prog, args = tokens[0], [t.split("|")[0] if "=" not in t else t for t in tokens[1:] if t not in GENERIC]
    where = f"{doc}:{line}"
    if prog == "python":
        _check_python_line(where, args)
        return
    assert prog in _console_scripts(), f"{where}: {prog} is not a console script of the package"
    if prog == "mmpretrain-hub":
        hub._parser().parse_args(args)  # argparse exits on an unknown subcommand or flag
        return
    if prog == "mmpretrain-shards":
        from mmpretrain.make_shards import parser

        parser().parse_args(args)
        return
    if prog == "mmpretrain-serve":
        from mmpretrain.serve import ServeConfig

        ServeConfig.from_args([a for a in map(_override, args) if a])
        return
    args = take_flags(args, FLAGS.get(prog, {}))
    flags = [a for a in args if a.startswith("-")]
    assert set(flags) <= {"-m", "--multirun", "--help", "--version"}, f"{where}: unknown flags {flags}"
    args = [a for a in args if not a.startswith("-")]
    args = [a for a in args if not (a.partition("=")[0] in GROUPS and "<" in a)]  # `experiment=<name>`: any option
    if prog in SUBCOMMANDS:
        assert args and args[0] in SUBCOMMANDS[prog], f"{where}: no subcommand"
        args = [f"command={args[0]}", *args[1:]]
    overrides = [o for o in map(_override, quote_data_values(args)) if o]
    assert len(overrides) == len(args), f"{where}: arguments that are not key=value: {args}"
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="mmpretrain.conf"):
        compose(CONFIGS[prog], overrides=overrides)


def _check_python_line(where: str, args: list[str]) -> None:
    """`python scripts/x.py ...` names a script of the checkout; `python -m mmpretrain.x` an importable module."""
    import importlib.util

    if args[:1] == ["-m"]:
        assert importlib.util.find_spec(args[1]) is not None, f"{where}: no module {args[1]}"
    elif args and args[0].endswith(".py"):
        assert (ROOT / args[0]).is_file(), f"{where}: no script {args[0]}"


def test_every_link_resolves_and_every_guide_is_reachable_from_the_readme() -> None:
    """Relative links in README.md and docs/ name files that exist, and each docs/ page is reachable by links."""
    links: dict[Path, set[Path]] = {}
    for doc in DOCUMENTS:
        targets = re.findall(r"\]\(([^)#:\s]+\.md)(?:#[^)]*)?\)", doc.read_text())
        links[doc] = {(doc.parent / target).resolve() for target in targets}
        missing = sorted(str(p) for p in links[doc] if not p.is_file())
        assert not missing, f"{doc.relative_to(ROOT)}: links to missing files {missing}"
    seen, todo = set(), [ROOT / "README.md"]
    while todo:
        doc = todo.pop()
        if doc not in seen:
            seen.add(doc)
            todo += list(links.get(doc, ()))
    unreachable = sorted(d.relative_to(ROOT).as_posix() for d in DOCUMENTS if d not in seen)
    assert not unreachable, f"pages no link leads to from README.md: {unreachable}"
