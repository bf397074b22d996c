"""Every `mmpretrain-*` command line in README.md composes with the shipped configs (paths aside), and every
`mmpretrain-hub` line parses: the README cannot name a key, group option or flag the project does not have."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
CONFIGS = {"mmpretrain-train": "train.yaml", "mmpretrain-eval": "eval.yaml", "mmpretrain-extract": "extract.yaml",
           "mmpretrain-index": "index.yaml", "mmpretrain-export": "export.yaml"}


def readme_commands() -> list[tuple[int, list[str]]]:
    """(line number, tokens) of each command in the README's shell blocks, continuation lines joined, comments cut."""
    commands, block, pending, start = [], False, "", 0
    for number, line in enumerate(README.read_text().splitlines(), start=1):
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
            if tokens and tokens[0] in (*CONFIGS, "mmpretrain-hub"):
                commands.append((start, tokens))
    return commands


def _override(token: str) -> str | None:
    """A README argument as a Hydra override: optional `[k=v]` unwrapped, placeholders (`<...>`, `...`) quoted."""
    token = token[1:-1] if token.startswith("[") and token.endswith("]") and "=" in token else token
    if "=" not in token:
        return None
    key, value = token.split("=", 1)
    if "<" in value or "..." in value or "|" in value:
        value = "'placeholder'"
    return f"{key}={value}"


COMMANDS = readme_commands()


def test_the_readme_has_commands_of_every_kind() -> None:
    assert {tokens[0] for _, tokens in COMMANDS} == {*CONFIGS, "mmpretrain-hub"}


@pytest.mark.parametrize(("line", "tokens"), COMMANDS, ids=[f"README:{n}" for n, _ in COMMANDS])
def test_readme_command_composes(line: int, tokens: list[str]) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from mmpretrain.cli import entry, hub

    prog, args = tokens[0], [t for t in tokens[1:] if t != "..."]
    if prog == "mmpretrain-hub":
        hub._parser().parse_args(args)  # argparse exits on an unknown subcommand or flag
        return
    flags = [a for a in args if a.startswith("-")]
    assert set(flags) <= {"-m", "--multirun", "--help", "--version"}, f"README:{line}: unknown flags {flags}"
    args = [a for a in args if not a.startswith("-")]
    if prog == "mmpretrain-index":
        assert args and args[0] in ("build", "search", "eval"), f"README:{line}: no subcommand"
        args = [f"command={args[0]}", *args[1:]]
    overrides = [o for o in map(_override, entry.quote_factory_strings(args)) if o]
    assert len(overrides) == len(args), f"README:{line}: arguments that are not key=value: {args}"
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="mmpretrain.conf"):
        compose(CONFIGS[prog], overrides=overrides)
