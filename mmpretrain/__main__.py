"""`python -m mmpretrain`: the project's version and its commands; `python -m mmpretrain <command> ...` runs one."""

from __future__ import annotations

import sys

from mmpretrain.cli.entry import COMMANDS, console, version_line


def main(argv: list[str] | None = None) -> int:
    """List the commands, or run `mmpretrain-<name>` given its short name (`train`, `eval`, ...)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and f"mmpretrain-{args[0]}" in COMMANDS:
        prog = f"mmpretrain-{args[0]}"
        sys.argv = [prog, *args[1:]]
        result = console(prog)()
        return result if isinstance(result, int) else 0
    if args and args[0] not in ("-h", "--help", "--version"):
        print(f"python -m mmpretrain: unknown command {args[0]!r}", file=sys.stderr)
        return 2
    print(version_line("mmpretrain"))
    print("commands (each takes --version; --help lists its keys):")
    width = max(map(len, COMMANDS))
    for prog, (_, summary, example) in COMMANDS.items():
        print(f"  {prog:<{width}}  {summary}\n  {'':<{width}}  e.g. {example}")
    print("or: python -m mmpretrain <train|eval|extract|index|export|hub> ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
