"""`mmpretrain-serve encoder=<source> [index=<dir>] [classifier=<dir>] [host=127.0.0.1] [port=8000] ...`."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

from mmpretrain.cli.entry import version_line
from mmpretrain.errors import MMPretrainError

PROG = "mmpretrain-serve"


def usage() -> str:
    """The `--help` text: every key with its default, from :class:`~mmpretrain.serve.ServeConfig`."""
    from mmpretrain.serve.config import ServeConfig

    lines = [f"usage: {PROG} encoder=<name|path|url> [index=<index or store dir>] [classifier=<dir>] key=value ...",
             "an HTTP service: /v1/embed, /v1/search, /v1/classify, /health, /metrics, docs at /docs, page at /", "",
             "keys:"]
    for f in dataclasses.fields(ServeConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"  {f.name}={'' if default is None else default}")
    lines += ["", f"example: {PROG} encoder=moby_swin_t_300ep index=/data/idx port=8000"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `key=value` words and serve; a bad key or file ends in one line on stderr and exit status 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args or "-V" in args:
        print(version_line(PROG))
        return
    if "--help" in args or "-h" in args:
        print(usage())
        return
    from mmpretrain.serve import ServeConfig

    try:
        config = ServeConfig.from_args(args)
        from mmpretrain.serve import serve

        serve(config)
    except MMPretrainError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
