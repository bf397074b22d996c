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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmpretrain import __version__
from mmpretrain.cli.quoting import parse_failure, quote_data_values, take_flags
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


def task_keys(path: Path) -> list[tuple[str, str, str]]:
    """`documented_keys` of a task config, spelled as set on the command line: a config in the `task` package (no
    `@package _global_` line) holds `task.*` keys; `name` is the task itself."""
    keys = documented_keys(path)
    if "@package _global_" in path.read_text():
        return keys
    return [(f"task.{key}", default, comment) for key, default, comment in keys if key != "name"]


def _format_keys(keys: list[tuple[str, str, str]]) -> list[str]:
    width = max((len(k) + len(v) for k, v, _ in keys), default=0) + 3
    lines = []
    for key, default, comment in keys:
        text = f"  {key}={default}"
        lines.append(f"{text:<{width}} {comment}".rstrip() if comment else text)
    return lines


#: the config groups `mmpretrain-train --help` lists, with what each chooses
TRAIN_GROUPS = {"experiment": "the recipe (data, model, trainer settings together); the unit to copy",
                "trainer": "where it runs", "logger": "where metrics go", "callbacks": "checkpoints and monitors",
                "debug": "short runs to check a setup", "hparams_search": "Optuna sweeps (with -m)"}
TRAIN_KEYS = [("data.root", "<folder>", "images to pretrain on (or data.file_list=<file>, data.shards=<tars>)"),
              ("data.batch_size", "64", "images per process and step"),
              ("trainer.max_epochs", "100", "epochs (the experiment sets its own)"),
              ("trainer.devices", "auto", "GPUs or CPU processes; trainer.num_nodes for several machines"),
              ("model.init", "null", "start from a checkpoint's weights (continued pretraining)"),
              ("callbacks.last_checkpoint.every_n_epochs", "1", "how often last.ckpt (what ckpt_path=last resumes) "
               "is written")]


def _train_help(conf: Path) -> list[str]:
    lines = ["config groups (group=<choice>):"]
    for group, what in TRAIN_GROUPS.items():
        choices = ", ".join(sorted(p.stem for p in (conf / group).glob("*.yaml")))
        lines.append(f"  {group:<15} {what}: {choices}")
    return [*lines, "", "keys of train.yaml:", *_format_keys(documented_keys(conf / "train.yaml")), "",
            "common keys (any key of the composed config can be set; --cfg job prints them all):",
            *_format_keys(TRAIN_KEYS)]


def task_help(prog: str, args: Sequence[str]) -> str:
    """A command's usage, its own keys (from its config file and, for eval, the chosen task) and an example."""
    conf = conf_dir()
    _, summary, example = COMMANDS[prog]
    name = prog.removeprefix("mmpretrain-")
    verbs = {"index": "{build|search|eval} ", "fewshot": "{fit|predict|estimate|suggest|export} "}.get(name, "")
    head = f"usage: {prog} {verbs}key=value ...\n{summary}\n"
    if name == "train":
        lines = [head, *_train_help(conf)]
    else:
        lines = [head, f"keys of {name}.yaml:", *_format_keys(documented_keys(conf / f"{name}.yaml"))]
    if name == "eval":
        task = next((a.split("=", 1)[1] for a in args if a.startswith("task=")), None)
        tasks = sorted(p.stem for p in (conf / "task").glob("*.yaml"))
        if task in tasks:
            lines += ["", f"keys of task={task}:", *_format_keys(task_keys(conf / "task" / f"{task}.yaml"))]
        else:
            lines += ["", f"tasks: {', '.join(tasks)} (`{prog} task=<name> --help` lists a task's keys)"]
        lines += ["", "data keys: data.* of the task's data group (conf/data/); trainer.* as in mmpretrain-train"]
    if name == "index":
        lines += ["", 'free text: --text "a red ball, moving left" (repeat for several; commas and any language '
                  "are kept), --query <file> likewise"]
    lines += ["", "values with braces, commas, spaces or non-ASCII characters: quote them for Hydra inside shell "
              "quotes, e.g. 'data.shards=\"/data/shard-{000000..000009}.tar\"'",
              "also: extras.print_config=true (print the config first), HYDRA_FULL_ERROR=1 (full tracebacks),",
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


#: what the README test quotes composed commands with: the same rule as the console scripts


_CONFIG_FILES = {"mmpretrain-train": "train.yaml", "mmpretrain-eval": "eval.yaml", "mmpretrain-extract": "extract.yaml",
                 "mmpretrain-index": "index.yaml", "mmpretrain-export": "export.yaml"}


def missing_value_message(prog: str, err: Exception) -> str:
    """One line for a mandatory key left at `???`: the key, what it takes (its config comment) and how to set it."""
    match = re.search(r"Missing mandatory value: ([\w.]+)", str(err))
    key = match.group(1) if match else str(getattr(err, "full_key", "") or "the key")
    config = _CONFIG_FILES.get(prog)
    comment = next((c for k, _, c in documented_keys(conf_dir() / config) if k == key), "") if config else ""
    about = f" ({comment})" if comment else ""
    return f"{key}=??? must be set{about}: add {key}=<value> to the command ({prog} --help lists the keys)"


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def short_errors(prog: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a Hydra task function: a project error ends in one line on stderr and exit status 1.

    `HYDRA_FULL_ERROR=1` and sweeps (whose trials must fail, not end the sweeper) get the exception itself.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

            from mmpretrain.cli.run_folder import in_sweep

            _STATE["started"] = True
            try:
                return fn(*args, **kwargs)
            except (MMPretrainError, MissingMandatoryValue, InterpolationToMissingValueError) as err:
                if _full_error() or in_sweep():
                    raise
                message = str(err) if isinstance(err, MMPretrainError) else missing_value_message(prog, err)
                print(f"{prog}: error: {message}", file=sys.stderr)
                raise SystemExit(1) from None

        return wrapped

    return decorate


_STATE = {"started": False}


def run_hydra(
    prog: str,
    config_name: str,
    hydra_main: Callable[[], Any],
    argv: Sequence[str] | None = None,
    flags: Mapping[str, str] | None = None,
) -> Any:
    """Answer `--version` and `--help`, quote data values for Hydra (`flags`: `--text "..."` -> `text=`), refuse an
    override Hydra's grammar cannot read with how to quote it, then run Hydra; when Hydra refuses an override, add
    "did you mean" for a mistyped key."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args or "-V" in args:
        print(version_line(prog))
        return None
    if "--help" in args or "-h" in args:
        print(task_help(prog, args))
        return None
    quoted = quote_data_values(take_flags(args, flags or {}))
    failure = parse_failure(quoted)
    if failure:
        print(f"{prog}: error: {failure}", file=sys.stderr)
        raise SystemExit(1)
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


def run_subcommand(
    prog: str,
    config_name: str,
    hydra_main: Callable[[], Any],
    subcommands: Sequence[str],
    usage: str,
    argv: Sequence[str] | None = None,
    flags: Mapping[str, str] | None = None,
) -> Any:
    """`prog <subcommand> key=value ...`: the subcommand becomes the override `command=`, then :func:`run_hydra`;
    a missing or unknown subcommand ends with the choices and the usage (exit status 2)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in subcommands and args[0] not in ("-h", "--help", "--version", "-V")):
        got = f"unknown subcommand {args[0]!r}" if args else "no subcommand"
        print(f"{prog}: {got}; choose {'|'.join(subcommands)}\n{usage}", file=sys.stderr)
        raise SystemExit(2)
    if args[0] in subcommands:
        args = [f"command={args[0]}", *args[1:]]
    return run_hydra(prog, config_name, hydra_main, args, flags)


def console(prog: str) -> Callable[[], Any]:
    """The console-script function of `prog`: imports the command's module only when it must run."""

    def main() -> Any:
        args = sys.argv[1:]
        if prog != "mmpretrain-hub" and ("--version" in args or "-V" in args):
            print(version_line(prog))
            return None
        if prog not in ("mmpretrain-hub", "mmpretrain-serve") and ("--help" in args or "-h" in args):
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
    """The result files a run wrote into its folder (metrics, tables, plots, predictions), not logs, configs or the
    run record (`run.json`)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    kept = (".json", ".jsonl", ".png", ".txt")
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix in kept and p.name != "run.json")
