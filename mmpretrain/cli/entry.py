"""What every Hydra console script shares: `--version`, a task's own `--help`, one-line errors, "did you mean".

Imports nothing heavy at module level, so `--version` and `--help` answer before torch is loaded; the command's
own module is imported only to run it.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmpretrain import __version__
from mmpretrain.errors import MMPretrainError

DISTRIBUTION = "mmpretrain-ssl"

#: command -> (module:function to run, one-line summary, example)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "mmpretrain-train": ("mmpretrain.cli.train:main", "any training: MoBY, video pretraining, video fine-tuning",
                         "mmpretrain-train experiment=moby_demo data.root=/data/images"),
    "mmpretrain-eval": ("mmpretrain.cli.eval:main", "evaluate an encoder or a store: knn|linear|fewshot|retrieval|"
                        "probe|predict", "mmpretrain-eval task=fewshot store=/data/emb n_way=5 n_shot=[1,5]"),
    "mmpretrain-extract": ("mmpretrain.cli.extract:main", "encode images or videos into an embedding store",
                           "mmpretrain-extract encoder=moby_swin_t_300ep input=/data/images output=/data/emb"),
    "mmpretrain-index": ("mmpretrain.cli.index:main", "FAISS indexes over an embedding store: build|search|eval",
                         "mmpretrain-index build store=/data/emb output=/data/idx"),
    "mmpretrain-export": ("mmpretrain.cli.export:main", "recommendation features from an embedding store",
                          "mmpretrain-export store=/data/emb output=/data/features format=parquet dim=64"),
    "mmpretrain-hub": ("mmpretrain.cli.hub:main", "checkpoints: list|download|verify|convert|publish|export",
                       "mmpretrain-hub list"),
    "mmpretrain-fewshot": ("mmpretrain.cli.fewshot:main", "a few-shot classifier to keep: fit|predict|estimate|"
                           "suggest|export", "mmpretrain-fewshot fit support=/data/labelled encoder=timm:resnet18 "
                           "output=my_classifier"),
    "mmpretrain-serve": ("mmpretrain.cli.serve:main", "an HTTP service: embed, search, classify, search page",
                         "mmpretrain-serve encoder=moby_swin_t_300ep index=/data/idx port=8000"),
}


def version_line(prog: str) -> str:
    """What `--version` prints: the command, the project's version and its distribution name."""
    return f"{prog} {__version__} ({DISTRIBUTION})"


def conf_dir() -> Path:
    """The config folder (the package `mmpretrain.conf`: `conf/` of a checkout, `mmpretrain/conf` in a wheel)."""
    import mmpretrain.conf

    return Path(next(iter(mmpretrain.conf.__path__)))


# ---------------------------------------------------------------------------------------------------- help


_KEY_RE = re.compile(r"^([A-Za-z_]\w*):\s*(.*)$")
_NOT_SHOWN = ("task_name", "tags", "defaults", "hydra", "extras")


def documented_keys(path: Path) -> list[tuple[str, str, str]]:
    """`(key, default, comment)` of a YAML config's top-level keys (and `task.*`), the comment being the lines above.

    Read as text, not composed, so that help costs nothing and shows the documentation the config file carries.
    """
    keys: list[tuple[str, str, str]] = []
    comment: list[str] = []
    section = None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if not stripped.startswith("# @package"):
                comment.append(stripped.lstrip("#").strip())
            continue
        match = _KEY_RE.match(stripped)
        if match and line == stripped:
            key, default = match.groups()
            section = None if default else key
            if default and key not in _NOT_SHOWN:
                keys.append((key, default, " ".join(comment)))
        elif match and section not in (None, *_NOT_SHOWN) and line == "  " + stripped and match.group(2):
            key = f"{section}.{match.group(1)}"
            if key != "task.name":
                keys.append((key, match.group(2), " ".join(comment)))
        comment = []
    return keys


def _format_keys(keys: list[tuple[str, str, str]]) -> list[str]:
    width = max((len(k) + len(v) for k, v, _ in keys), default=0) + 3
    lines = []
    for key, default, comment in keys:
        text = f"  {key}={default}"
        lines.append(f"{text:<{width}} {comment}".rstrip() if comment else text)
    return lines


def task_help(prog: str, args: Sequence[str]) -> str:
    """A command's usage, its own keys (from its config file and, for eval, the chosen task) and an example."""
    conf = conf_dir()
    _, summary, example = COMMANDS[prog]
    name = {"mmpretrain-eval": "eval", "mmpretrain-extract": "extract", "mmpretrain-index": "index",
            "mmpretrain-export": "export", "mmpretrain-fewshot": "fewshot"}[prog]  # fmt: skip
    verbs = {"index": "{build|search|eval} ", "fewshot": "{fit|predict|estimate|suggest|export} "}.get(name, "")
    head = f"usage: {prog} {verbs}key=value ...\n{summary}\n"
    lines = [head, f"keys of {name}.yaml:", *_format_keys(documented_keys(conf / f"{name}.yaml"))]
    if name == "eval":
        task = next((a.split("=", 1)[1] for a in args if a.startswith("task=")), None)
        tasks = sorted(p.stem for p in (conf / "task").glob("*.yaml"))
        if task in tasks:
            lines += ["", f"keys of task={task}:", *_format_keys(documented_keys(conf / "task" / f"{task}.yaml"))]
        else:
            lines += ["", f"tasks: {', '.join(tasks)} (`{prog} task=<name> --help` lists a task's keys)"]
        lines += ["", "data keys: data.* of the task's data group (conf/data/); trainer.* as in mmpretrain-train"]
    lines += ["", "also: extras.print_config=true (print the config first), HYDRA_FULL_ERROR=1 (full tracebacks),",
              "      --cfg job (print the composed config and exit), --version", "", f"example: {example}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- errors


def override_hint(config_name: str, overrides: Sequence[str]) -> str | None:
    """"did you mean ..." for the first override whose key the composed config does not have (None: no such key).

    Only called after Hydra refused the command line, so a working command never composes twice.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import DictConfig, OmegaConf

    plain = [o for o in overrides if "=" in o and not o.startswith(("-", "hydra.", "hydra/"))]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        try:
            compose(config_name, overrides=plain)
            return None
        except HydraException as err:
            full_key = getattr(err.__cause__, "full_key", None)
        if not full_key:
            return None
        rest = [o for o in plain if o.split("=", 1)[0].lstrip("+~") != full_key]
        try:
            cfg = compose(config_name, overrides=rest)
        except HydraException:
            return None
    parent, _, leaf = str(full_key).rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return None
    keys = [str(k) for k in node]
    prefix = f"{parent}." if parent else ""
    # a key that moved into a settings node (data.blur_p -> data.view.blur_p) is found one level down
    children = OmegaConf.to_container(node, resolve=False)
    moved = [f"{prefix}{k}.{leaf}" for k, child in children.items() if isinstance(child, dict) and leaf in child]
    if moved:
        return "did you mean " + " or ".join(f"`{m}`" for m in moved) + "?"
    close = difflib.get_close_matches(leaf, keys, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(f"`{prefix}{c}`" for c in close) + "?"
    return f"`{full_key}` is not a key; {parent or 'the config'} has: {', '.join(sorted(keys))}"


#: keys whose values are faiss index_factory strings, which contain commas ("IVF1024,Flat")
FACTORY_KEYS = ("index_key", "i2i_index_key", "task.index_key")


def quote_factory_strings(args: Sequence[str]) -> list[str]:
    """`index_key=IVF128,Flat` as typed: Hydra reads an unquoted comma as a sweep (or refuses it as ambiguous),
    so a factory key's value is quoted for it. Under `-m`/`--multirun` commas keep meaning a sweep."""
    if any(a in ("-m", "--multirun") for a in args):
        return list(args)
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in FACTORY_KEYS and "," in value and value[:1] not in "'\"[":
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def short_errors(prog: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a Hydra task function: a project error ends in one line on stderr and exit status 1.

    `HYDRA_FULL_ERROR=1` and sweeps (whose trials must fail, not end the sweeper) get the exception itself.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            _STATE["started"] = True
            try:
                return fn(*args, **kwargs)
            except MMPretrainError as err:
                if _full_error() or _in_sweep():
                    raise
                print(f"{prog}: error: {err}", file=sys.stderr)
                raise SystemExit(1) from None

        return wrapped

    return decorate


_STATE = {"started": False}


def run_hydra(prog: str, config_name: str, hydra_main: Callable[[], Any], argv: Sequence[str] | None = None) -> Any:
    """Answer `--version` and (for eval/extract/index/export) `--help`, then run Hydra; when Hydra refuses an
    override, add "did you mean" for a mistyped key."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args or "-V" in args:
        print(version_line(prog))
        return None
    if prog != "mmpretrain-train" and ("--help" in args or "-h" in args):
        print(task_help(prog, args))
        return None
    quoted = quote_factory_strings(args)
    if argv is not None or quoted != args:
        sys.argv = [sys.argv[0], *quoted]
    _STATE["started"] = False
    try:
        return hydra_main()
    except SystemExit as exit_:
        if exit_.code not in (0, None) and not _STATE["started"]:
            hint = override_hint(config_name, args)
            if hint:
                print(hint, file=sys.stderr)
        raise


def console(prog: str) -> Callable[[], Any]:
    """The console-script function of `prog`: imports the command's module only when it must run."""

    def main() -> Any:
        args = sys.argv[1:]
        if prog != "mmpretrain-hub" and ("--version" in args or "-V" in args):
            print(version_line(prog))
            return None
        own_help = ("mmpretrain-train", "mmpretrain-hub", "mmpretrain-serve")
        if prog not in own_help and ("--help" in args or "-h" in args):
            print(task_help(prog, args))
            return None
        module, _, function = COMMANDS[prog][0].partition(":")
        return getattr(importlib.import_module(module), function)()

    main.__name__ = prog.replace("-", "_")
    return main


train = console("mmpretrain-train")
evaluate = console("mmpretrain-eval")
extract = console("mmpretrain-extract")
index = console("mmpretrain-index")
export = console("mmpretrain-export")
hub = console("mmpretrain-hub")
fewshot = console("mmpretrain-fewshot")
serve = console("mmpretrain-serve")


def print_outputs(prog: str, paths: Sequence[str | os.PathLike]) -> None:
    """End a run by naming where its outputs are (on stderr, so stdout stays the results)."""
    shown = [str(Path(p).resolve()) for p in paths if Path(p).exists()]
    if shown:
        print(f"{prog}: outputs:\n" + "\n".join(f"  {p}" for p in shown), file=sys.stderr)


def run_outputs(folder: str | os.PathLike) -> list[Path]:
    """The result files a run wrote into its folder (metrics, tables, plots, predictions), not logs or configs."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl", ".png", ".txt"))
