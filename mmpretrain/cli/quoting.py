"""Command-line values Hydra's override grammar cannot take as typed, made to work or explained in one line.

Hydra reads ``key=value`` with a grammar of its own: an unquoted comma means a sweep, and braces, some punctuation
and non-ASCII letters are refused (``mismatched input '{'``, ``LexerNoViableAltException``). Values that are data,
not config syntax, are quoted for Hydra here: faiss factory strings (``index_key=IVF1024,Flat``) and free text
(``text=a red ball, moving left``, ``text=红色的球向左移动``, or ``--text "..."``). For any other value Hydra
refuses, :func:`parse_failure` says which argument and how to quote it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["FACTORY_KEYS", "FREE_TEXT_KEYS", "hydra_quote", "parse_failure", "quote_data_values", "take_flags"]

#: keys whose values are faiss index_factory strings, which contain commas ("IVF1024,Flat")
FACTORY_KEYS = ("index_key", "i2i_index_key", "task.index_key")
#: keys whose values are natural-language text: taken whole, whatever characters they hold
FREE_TEXT_KEYS = ("text",)


def hydra_quote(value: str) -> str:
    """``value`` as a single-quoted Hydra string (quotes, the backslashes before them and ``${`` escaped)."""
    out, backslashes = [], 0
    for char in value.replace("${", "\x00"):
        if char == "\\":
            backslashes += 1
            continue
        if char == "'":
            out.append("\\" * (2 * backslashes) + "\\'")
        elif char == "\x00":
            out.append("\\" * (2 * backslashes) + "\\${")
        else:
            out.append("\\" * backslashes + char)
        backslashes = 0
    out.append("\\" * (2 * backslashes))  # trailing backslashes must not escape the closing quote
    return "'" + "".join(out) + "'"


def _multirun(args: Sequence[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in args)


def quote_data_values(args: Sequence[str]) -> list[str]:
    """Quote the values of factory-string and free-text keys for Hydra, so they are taken as typed.

    Values already quoted or written as a list (``text=[a,b]``) are left to Hydra; under ``-m``/``--multirun``
    factory strings keep Hydra's meaning (commas sweep), free text is still quoted.
    """
    multirun = _multirun(args)
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        bare = key.lstrip("+")
        plain = sep and value and value[:1] not in "'\"["
        factory = bare in FACTORY_KEYS and "," in value and not multirun
        if plain and (bare in FREE_TEXT_KEYS or factory):
            arg = f"{key}={hydra_quote(value)}"
        out.append(arg)
    return out


def take_flags(args: Sequence[str], flags: Mapping[str, str]) -> list[str]:
    """Turn ``--text "a, b"`` (or ``--text="a, b"``) into a quoted override of its key; repeated flags make a list.

    ``flags`` maps a flag to its key (``{"--text": "text", "--query": "query"}``). Raises ``SystemExit(2)`` with
    a usage line when a flag has no value.
    """
    rest: list[str] = []
    found: dict[str, list[str]] = {}
    items = list(args)
    i = 0
    while i < len(items):
        flag, eq, inline = items[i].partition("=")
        if flag in flags:
            if eq:
                value = inline
            elif i + 1 < len(items):
                i += 1
                value = items[i]
            else:
                raise SystemExit(f"{flag} needs a value, e.g. {flag} \"a red ball, moving left\"")
            found.setdefault(flags[flag], []).append(value)
        else:
            rest.append(items[i])
        i += 1
    for key, values in found.items():
        quoted = [hydra_quote(v) for v in values]
        rest.append(f"{key}={quoted[0]}" if len(quoted) == 1 else f"{key}=[{','.join(quoted)}]")
    return rest


def parse_failure(args: Sequence[str]) -> str | None:
    """One line naming the first override Hydra's grammar refuses and how to quote it; None when all parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as err:
            key, _, value = arg.partition("=")
            reason = str(err).strip().splitlines()[0]
            inner = f'"{value}"' if '"' not in value else hydra_quote(value)
            return (f"cannot read `{arg}` ({reason}): Hydra needs a value with braces, commas, spaces, quotes or "
                    f"non-ASCII characters quoted, and the shell removes one pair of quotes, so type '{key}={inner}'")
    return None
