"""The Omniglot small2 protocol: MoBY on three alphabets, 20-way 1-shot within each of two held-out alphabets.

Pretrains `experiment=moby_small` without labels on Greek, Latin and Tagalog (or takes `--checkpoint`), then runs
`mmpretrain-eval task=fewshot data.root=<alphabet> n_way=20 n_shot=1` within Japanese_(katakana) and within
Sanskrit for the pretrained encoder, the same architecture at random init, and raw pixels (the encoder's own
preprocessing, flattened, written to an embedding store and read back with `store=`). The 20 candidates of an
episode are characters of one script, drawn by other people than the query, as in Lake et al. (2015). Prints a
table and one JSON line (with the pretraining's steps, wall time and CPU time).

    python -m mmpretrain.cli.omniglot [/data/images_background_small2] [--checkpoint last.ckpt] [key=value ...]
    python -m mmpretrain.cli.omniglot budget_minutes=10          # the vendored drawings, a 10-minute budget

Extra `key=value` arguments go to `mmpretrain-train` (e.g. `trainer=gpu`, `trainer.max_steps=2000`). Without a data
folder the drawings that ship with the package are unpacked under `--out` (:func:`mmpretrain.data.omniglot_folder`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmpretrain.data import labeled_folder, omniglot_folder
from mmpretrain.embeddings import finalize_store, write_shard
from mmpretrain.encoders import ImageTransform
from mmpretrain.hub import load_checkpoint

BIN = Path(sys.executable).parent
PRETRAIN = ("Greek", "Latin", "Tagalog")
HELD_OUT = ("Japanese_(katakana)", "Sanskrit")
QUIET = ["extras.print_config=false"]


def _run(args: list[str]) -> dict[str, float]:
    """Run one command; returns its wall and CPU seconds (user + system, its child processes included)."""
    print("$", " ".join(a for a in args if not a.startswith(("extras.", "hydra."))), flush=True)
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-5000:] + done.stderr[-5000:])
        raise SystemExit(f"step failed: {' '.join(args)}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(cpu, 1)}


def _value(path: Path) -> str:
    """A path as a quoted Hydra override value: Japanese_(katakana) has characters the override grammar reserves."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _alphabet(data: Path, name: str) -> Path:
    folder = data / name
    if not folder.is_dir():
        raise SystemExit(f"{folder} does not exist: give the unzipped images_background_small2 folder")
    return folder


def pretrain(data: Path, out: Path, overrides: list[str]) -> tuple[Path, dict[str, float]]:
    """`experiment=moby_small` on the unlabeled images of the three pretraining alphabets; returns last.ckpt and
    the pretraining's optimizer steps, wall and CPU seconds."""
    file_list = out / "pretrain.txt"
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(str(p) for name in PRETRAIN for p in _alphabet(data, name).rglob("*.png"))
    file_list.write_text("\n".join(paths) + "\n")
    print(f"pretraining on {len(paths)} images of {', '.join(PRETRAIN)}")
    cost = _run([str(BIN / "mmpretrain-train"), "experiment=moby_small", f"data.file_list={_value(file_list)}",
                 "logger=csv", f"hydra.run.dir={_value(out / 'train')}", "trainer.enable_progress_bar=false", *QUIET,
                 *overrides])
    ckpt = out / "train/checkpoints/last.ckpt"
    steps = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    print(f"pretrained {steps} steps in {cost['wall_s']:.0f} s wall, {cost['cpu_s']:.0f} CPU-s")
    return ckpt, {"steps": steps, **cost}


def pixel_store(checkpoint: Path, folder: Path, out: Path) -> Path:
    """Raw pixels of a labeled folder at the checkpoint's preprocessing, one flattened row per image."""
    prep = load_checkpoint(str(checkpoint)).config["preprocessing"]
    transform = ImageTransform(prep["image_size"], prep.get("crop_pct", 0.875), prep.get("interpolation", "bicubic"))
    source = labeled_folder(folder, key="data.root")
    rows = []
    for path in source.paths:
        with Image.open(path) as image:
            rows.append(transform(image)[0].numpy().reshape(-1))  # grayscale: one channel holds everything
    pixels = np.stack(rows).astype(np.float32) / 255
    labels = [source.classes[i] for i in source.labels]
    write_shard(out, 0, pixels, {"id": source.paths, "path": source.paths, "label": labels})
    finalize_store(out, encoder=f"raw pixels {prep['image_size']} px", dim=pixels.shape[1], dtype="float32",
                   normalized=False)
    return out


def fewshot(source: list[str], folder: Path, out: Path, methods: list[str], episodes: int) -> dict:
    """One `mmpretrain-eval task=fewshot` run: 20-way 1-shot within the alphabet; returns its fewshot.json."""
    _run([str(BIN / "mmpretrain-eval"), "task=fewshot", *source, "n_way=20", "n_shot=1", "n_query=15",
          f"episodes={episodes}", f"methods=[{','.join(methods)}]", "plot=false", f"hydra.run.dir={_value(out)}",
          *QUIET])
    return json.loads((out / "fewshot.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mmpretrain.cli.omniglot", description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="?", default=None,
                        help="the unzipped images_background_small2 folder (default: the drawings the package ships)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="evaluate this MoBY checkpoint, no training")
    parser.add_argument("--out", type=Path, default=Path("logs/omniglot_protocol"))
    parser.add_argument("--methods", default="protonet,simpleshot", help="few-shot methods, comma-separated")
    parser.add_argument("--episodes", type=int, default=1000)
    args, overrides = parser.parse_known_args()
    if args.data is not None and "=" in str(args.data) and not args.data.exists():  # an override, no data folder
        overrides, args.data = [str(args.data), *overrides], None
    out = args.out.resolve()
    data = args.data.resolve() if args.data else omniglot_folder(out / "omniglot")
    methods = args.methods.split(",")
    ckpt, cost = (args.checkpoint.resolve(), {}) if args.checkpoint else pretrain(data, out, overrides)
    results: dict[str, dict[str, dict]] = {}
    for alphabet in HELD_OUT:
        folder = _alphabet(data, alphabet)
        runs = out / "eval" / alphabet.replace("(", "").replace(")", "")
        sources = {
            "raw pixels": [f"store={_value(pixel_store(ckpt, folder, runs / 'pixels_store'))}"],
            "random init": [f"encoder={_value(ckpt)}", "random_init=true", f"data.root={_value(folder)}"],
            "moby_small": [f"encoder={_value(ckpt)}", f"data.root={_value(folder)}"],
        }
        results[alphabet] = {
            name: fewshot(source, folder, runs / name.replace(" ", "_"), methods, args.episodes)["results"]
            for name, source in sources.items()
        }
    print(f"\nOmniglot small2, 20-way 1-shot within an alphabet ({args.episodes} episodes, 15 queries, ±95% CI)")
    print(f"checkpoint: {ckpt}")
    header = f"{'alphabet':<22}{'method':<12}" + "".join(f"{name:>16}" for name in results[HELD_OUT[0]])
    print(header)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for alphabet, by_source in results.items():
        for method in methods:
            cells = {name: r[method]["1"] for name, r in by_source.items()}
            # mmpretrain-eval reports few-shot accuracy in percent already
            summary.setdefault(alphabet, {})[method] = {k: round(v["mean"], 2) for k, v in cells.items()}
            print(f"{alphabet:<22}{method:<12}"
                  + "".join(f"{c['mean']:>9.1f} ± {c['ci95']:.1f}" for c in cells.values()))
    print(json.dumps({"protocol": "omniglot_small2_20way_1shot", "checkpoint": str(ckpt), "overrides": overrides,
                      "pretraining": cost, "accuracy": summary}))


if __name__ == "__main__":
    main()
