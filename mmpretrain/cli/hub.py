"""``mmpretrain-hub``: list, download, verify, convert, publish and export checkpoints from the command line.

``export`` also takes the project's ``key=value`` form: ``mmpretrain-hub export timm:resnet18 format=onnx
output=resnet18.onnx``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mmpretrain import hub
from mmpretrain.cli.entry import version_line
from mmpretrain.errors import ConfigError, MMPretrainError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmpretrain-hub", description=__doc__)
    parser.add_argument("--version", action="version", version=version_line("mmpretrain-hub"))
    parser.add_argument("--registry", help="extra registry file (JSON/YAML); MMPRETRAIN_REGISTRY also works")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="registered checkpoint names, formats and URLs")

    p = sub.add_parser("download", help="download a registered checkpoint or URL into the cache; prints its path")
    p.add_argument("name", help="registry name or URL")
    p.add_argument("--cache-dir", help="cache root (default: $MMPRETRAIN_HOME/checkpoints)")
    p.add_argument("--sha256", help="expected sha256 (overrides the registry's)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--verify", choices=("stat", "full"), default="stat",
                   help="cache hits: trust the sidecar while size+mtime match (stat) or always re-hash (full)")
    p.add_argument("--deadline", type=float, help="seconds for the whole download (default 6 h)")

    p = sub.add_parser(
        "verify", help="re-hash a file, or the cached copy of a registry name/URL, against its sha256; prints it"
    )
    p.add_argument("path", help="a file, or a registry name or URL whose cached copy is checked")
    p.add_argument("--sha256", help="expected sha256; without it the registry's, else the .sha256 sidecar's")
    p.add_argument("--cache-dir", help="cache root (default: $MMPRETRAIN_HOME/checkpoints)")

    p = sub.add_parser("convert", help="convert a checkpoint (e.g. official MoBY) into the own safetensors format")
    p.add_argument("input", help="registry name, URL or file")
    p.add_argument("out_dir")
    p.add_argument("--arch", help="timm model name, for files that carry no architecture")
    p.add_argument("--arch-kwargs", default="{}", help="JSON object of timm model kwargs for --arch")
    p.add_argument("--name", help="registry name of the result (default: from the input file name)")
    p.add_argument("--url", help="where model.safetensors will be hosted (default: its file:// URI)")

    p = sub.add_parser("publish", help="turn a training checkpoint into safetensors + config.json + sha256")
    p.add_argument("checkpoint", help="Lightning .ckpt written by mmpretrain-train")
    p.add_argument("out_dir")
    p.add_argument("--name", help="registry name (default: <experiment>_<run> from logs/<experiment>/runs/<run>/)")
    p.add_argument("--url", help="where model.safetensors will be hosted (default: its file:// URI)")

    p = sub.add_parser("export", help="an encoder as one ONNX or TorchScript file (images -> embeddings), "
                       "checked against PyTorch; its preprocessing in <output>.json")
    p.add_argument("encoder", help="registry name, checkpoint, URL, timm:<model>, random:<spec> or pixels")
    p.add_argument("settings", nargs="*", metavar="key=value", help="format=onnx|torchscript output=<file> "
                   "[tolerance=1e-4]")
    return parser


_EXPORT_KEYS = {"format": str, "output": str, "tolerance": float}


def _export_settings(settings: Sequence[str]) -> dict:
    """`format=`, `output=` and `tolerance=` of `mmpretrain-hub export`, each named in its error."""
    values: dict = {"format": "onnx", "tolerance": 1e-4}
    for item in settings:
        key, sep, value = item.partition("=")
        key = key.lstrip("-").replace("-", "_")
        if not sep or key not in _EXPORT_KEYS:
            raise ConfigError(f"{item!r}: expected one of {', '.join(k + '=' for k in _EXPORT_KEYS)}")
        try:
            values[key] = _EXPORT_KEYS[key](value)
        except ValueError:
            raise ConfigError(f"{key}={value}: not a number") from None
    if "output" not in values:
        raise ConfigError("export needs output=<file.onnx|file.pt>")
    return values


def _print_entry(entry: dict) -> None:
    body = {k: v for k, v in entry.items() if k != "name"}
    print(f"wrote {entry['url']} (sha256 {entry['sha256']}); registry entry to paste into a registry JSON file:")
    print(json.dumps({entry["name"]: body}, indent=2))


def _run(args: argparse.Namespace) -> int:
    if args.command == "list":
        for name, entry in sorted(hub.load_registry(args.registry).items()):
            print(f"{name}\t{entry.format}\t{entry.sha256 or '-'}\t{entry.url}")
    elif args.command == "download":
        path = hub.download(
            args.name,
            cache_dir=args.cache_dir,
            sha256=args.sha256,
            progress=not args.no_progress,
            registry=args.registry,
            verify=args.verify,
            deadline_s=args.deadline,
        )
        print(path)
    elif args.command == "verify":
        if Path(args.path).exists():
            print(f"{hub.verify(args.path, args.sha256)}  {args.path}")
        else:
            path, digest = hub.verify_cached(args.path, args.sha256, args.cache_dir, args.registry)
            print(f"{digest}  {path}")
    elif args.command == "convert":
        architecture = None
        if args.arch:
            architecture = {"name": args.arch, "kwargs": json.loads(args.arch_kwargs)}
        _print_entry(
            hub.convert_to_published(
                args.input,
                args.out_dir,
                name=args.name,
                architecture=architecture,
                url=args.url,
                registry=args.registry,
            )
        )
    elif args.command == "export":
        from mmpretrain.fewshot import export_encoder

        settings = _export_settings(args.settings)
        record = export_encoder(args.encoder, settings["output"], format=settings["format"],
                                tolerance=settings["tolerance"])
        print(json.dumps({"output": settings["output"], "parity": record["parity"]}))
    else:
        _print_entry(hub.publish(args.checkpoint, args.out_dir, name=args.name, url=args.url))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mmpretrain-hub``; returns the exit status (0 ok, 1 error, 2 usage)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (MMPretrainError, OSError, KeyError, ValueError) as e:
        print(f"mmpretrain-hub {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
