"""`make demo`: the project end to end on procedurally generated data, on a CPU, in a few minutes.

1. Writes the deterministic demo image set (shapes whose class is the shape, not the colour) to data/demo.
2. Pretrains a tiny Swin with MoBY (`experiment=moby_demo`), tracked in W&B offline mode.
3. Scores the pretrained encoder and the same architecture at random init: weighted kNN, then few-shot episodes
   (5-way 1- and 5-shot, mean ± 95% CI), side by side.
4. Extracts the demo set's embeddings into a store, builds a FAISS index over it and shows a query's top hits,
   and exports recommendation features with an item-to-item table.
5. Writes the demo videos (moving shapes with titles and rendered OCR, H.264 MP4 and MPEG-4 AVI), pretrains the
   video–text model (`experiment=video_fusion_demo`: MVM, MTM, VTM, VTC), and compares it with random init on
   held-out text↔video retrieval (VTC, then VTM re-ranking), classification and tagging fine-tuning; then searches
   a video store by text.

Every step runs through the console entry point a user would call; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
QUIET = ["extras.print_config=false"]


def _run(args: list[str], cwd: Path) -> str:
    print("$", " ".join(args[:1] + [a for a in args[1:] if not a.startswith(("extras.", "hydra."))]), flush=True)
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-5000:] + done.stderr[-5000:])
        raise SystemExit(f"demo step failed: {' '.join(args)}")
    return done.stdout


def _last_json(stdout: str) -> dict:
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith("{")))


def _section(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="where data/ and logs/ go")
    parser.add_argument("--epochs", type=int, default=None, help="override the experiment's epochs")
    parser.add_argument("--skip-images", action="store_true", help="only the video part")
    parser.add_argument("--skip-videos", action="store_true", help="only the image part")
    parser.add_argument("--ablation", action="store_true",
                        help="instead of the video part, pretrain once per video recipe row (docs/results-video.md)")
    parser.add_argument("--ablation-epochs", type=int, default=None, help="override the video epochs (smoke runs)")
    parser.add_argument("--ablation-seed", type=int, default=42, help="the seed of every --ablation training")
    args = parser.parse_args()
    root = args.root.resolve()
    demo = root / "data/demo"
    runs = root / "logs/demo"
    started = time.time()
    if not args.skip_images:
        _images(root, demo, runs, args.epochs)
    if args.ablation:
        _ablation(root, runs, runs / "train/checkpoints/last.ckpt", args.ablation_epochs, args.ablation_seed)
    elif not args.skip_videos:
        _videos(root, runs, runs / "train/checkpoints/last.ckpt")
    print(f"\ndemo done in {time.time() - started:.0f} s")


def _images(root: Path, demo: Path, runs: Path, epochs: int | None) -> None:
    """MoBY on the demo images, kNN and few-shot against random init, a store, an index, recommendation features."""
    _section("demo images")
    if not (demo / "val").is_dir():
        from mmpretrain.data import make_demo_images

        make_demo_images(demo)
    print(f"{demo}: {len(list((demo / 'train').rglob('*.png')))} train, {len(list((demo / 'val').rglob('*.png')))} val")

    _section("MoBY pretraining (experiment=moby_demo)")
    train = [str(BIN / "mmpretrain-train"), "experiment=moby_demo", f"paths.data_dir={root}/data",
             f"hydra.run.dir={runs}/train", "trainer.enable_progress_bar=false", *QUIET]  # fmt: skip
    if epochs:
        train.append(f"trainer.max_epochs={epochs}")
    _run(train, root)
    ckpt = runs / "train/checkpoints/last.ckpt"
    print(f"checkpoint: {ckpt}")

    _section("kNN (k=20, T=0.07): train split as the bank, val split as queries")
    knn = {}
    for label, random_init in (("random init", "true"), ("MoBY pretrained", "false")):
        out = _run(
            [str(BIN / "mmpretrain-eval"), "task=knn", f"encoder={ckpt}", f"random_init={random_init}",
             f"data.train_root={demo}/train", f"data.val_root={demo}/val", "data.num_workers=2",
             f"hydra.run.dir={runs}/knn_{random_init}", *QUIET],
            root,
        )  # fmt: skip
        knn[label] = _last_json(out)
    print(f"{'encoder':<18}{'top-1':>8}{'top-5':>8}")
    for label, record in knn.items():
        print(f"{label:<18}{record['knn/top1']:>8.1f}{record['knn/top5']:>8.1f}")

    _section("few-shot on the val split: 5-way, 1000 episodes, 10 queries, mean ± 95% CI")
    fewshot = {}
    for label, random_init in (("random init", "true"), ("MoBY pretrained", "false")):
        out = _run(
            [str(BIN / "mmpretrain-eval"), "task=fewshot", f"encoder={ckpt}", f"random_init={random_init}",
             f"data.root={demo}/val", "n_way=5", "n_shot=[1,5]", "n_query=10", "episodes=1000",
             "methods=[simpleshot,protonet,logreg]", f"hydra.run.dir={runs}/fewshot_{random_init}", *QUIET],
            root,
        )  # fmt: skip
        fewshot[label] = json.loads((runs / f"fewshot_{random_init}/fewshot.json").read_text())
    keys = [(m, s) for m in ("simpleshot", "protonet", "logreg") for s in (1, 5)]
    print(f"{'method':<12}{'shots':>6}{'random init':>18}{'MoBY pretrained':>20}")
    for method, shots in keys:
        cells = []
        for label in ("random init", "MoBY pretrained"):
            r = _find(fewshot[label], method, shots)
            cells.append(f"{r['mean']:6.1f} ± {r['ci95']:.1f}")
        print(f"{method:<12}{shots:>6}{cells[0]:>18}{cells[1]:>20}")

    _section("embedding store, FAISS index and a query")
    store = runs / "store"
    _run([str(BIN / "mmpretrain-extract"), f"encoder={ckpt}", f"input={demo}/val", f"output={store}",
          "trainer=cpu", "num_workers=2", "overwrite=true", f"hydra.run.dir={runs}/extract", *QUIET], root)  # fmt: skip
    print(f"store: {store} ({json.loads((store / 'manifest.json').read_text())['count']} rows)")
    index = runs / "index"
    _run([str(BIN / "mmpretrain-index"), "build", f"store={store}", f"output={index}", *QUIET], root)
    query = sorted((demo / "val/triangle").glob("*.png"))[0]
    print(_run([str(BIN / "mmpretrain-index"), "search", f"index={index}", f"query={query}", "k=5", *QUIET], root))

    _section("recommendation features (Parquet, 16-d PCA) and an item-to-item table")
    features = runs / "features"
    print(_run([str(BIN / "mmpretrain-export"), f"store={store}", "format=parquet", "dim=16", f"output={features}",
                "i2i_k=5", *QUIET], root).strip().splitlines()[-1])  # fmt: skip

    gain = knn["MoBY pretrained"]["knn/top1"] - knn["random init"]["knn/top1"]
    print(f"\nMoBY pretraining: kNN top-1 {gain:+.1f} points over random init")


def _videos(root: Path, runs: Path, moby: Path) -> None:
    """Video–text pretraining on the demo videos, then retrieval and fine-tuning against random init.

    The frame encoder and the MVM teacher start from the image half's MoBY checkpoint (its architecture too) when
    it exists; without it (``--skip-images`` on a fresh folder) the frames start at random and MVM regresses pixels.
    """
    _section("demo videos")
    videos = _demo_videos(root)
    counts = {s: len((videos / f"{s}.jsonl").read_text().splitlines()) for s in ("train", "val")}
    print(f"{videos}: {counts['train']} train, {counts['val']} held-out videos")

    _section("video–text pretraining (experiment=video_fusion_demo)")
    init = ["model.frame_encoder=null", f"model.frame_init={moby}"] if moby.is_file() else []
    print(f"frame encoder and MVM teacher: {moby if init else 'random init / pixel MVM (no MoBY checkpoint)'}")
    _run([str(BIN / "mmpretrain-train"), "experiment=video_fusion_demo", f"paths.data_dir={root}/data",
          f"hydra.run.dir={runs}/video_train", "trainer.enable_progress_bar=false", *init, *QUIET], root)  # fmt: skip
    ckpt = runs / "video_train/checkpoints/last.ckpt"
    print(f"checkpoint: {ckpt}")

    from mmpretrain.video.demo import DEMO_ATTRIBUTES, attribute_agreement

    _section("held-out text↔video retrieval: VTC through a FAISS index, then VTM re-ranking of each text's top 10")
    retrieval = {}
    for label, random_init in (("random init", "true"), ("pretrained", "false")):
        _run([str(BIN / "mmpretrain-eval"), "task=retrieval", f"encoder={ckpt}", f"random_init={random_init}",
              f"data.manifest={videos}/val.jsonl", f"hydra.run.dir={runs}/video_retrieval_{random_init}", *QUIET],
             root)  # fmt: skip
        retrieval[label] = json.loads((runs / f"video_retrieval_{random_init}/metrics.json").read_text())

    _section("fine-tuning on frames alone (titles name the labels) from the pretrained checkpoint vs random init")
    frames_only = {split: _frames_only(videos / f"{split}.jsonl") for split in ("train", "val")}
    finetune = {}
    for task, experiment, metric in (("classify", "video_classify_demo", "val/top1"),
                                     ("tagging", "video_tagging_demo", "val/mAP")):
        for label, random_init in (("random init", "true"), ("pretrained", "false")):
            folder = runs / f"video_{task}_{random_init}"
            shutil.rmtree(folder, ignore_errors=True)  # a rerun must not read an earlier run's CSV log
            _run([str(BIN / "mmpretrain-train"), f"experiment={experiment}", f"model.pretrained={ckpt}",
                  f"model.random_init={random_init}", f"paths.data_dir={root}/data", "logger=csv",
                  f"data.train_manifest={frames_only['train']}", f"data.val_manifest={frames_only['val']}",
                  f"hydra.run.dir={folder}", "trainer.enable_progress_bar=false", *QUIET], root)  # fmt: skip
            finetune[(task, label)] = _best(folder / "csv/version_0/metrics.csv", metric)

    print(f"{'metric (' + str(counts['val']) + ' held-out videos)':<46}{'random init':>12}{'pretrained':>12}")
    rows = [
        ("text→video R@1 (VTC)", lambda r: r["t2v"]["R@1"]),
        ("text→video R@5 (VTC)", lambda r: r["t2v"]["R@5"]),
        ("video→text R@1 (VTC)", lambda r: r["v2t"]["R@1"]),
        ("text→video R@1 after VTM re-ranking", lambda r: r["t2v_rerank"]["R@1"]),
        ("VTM accuracy (own text vs a random other text)", lambda r: r["vtm_accuracy"]),
        ("VTM accuracy (own text vs the hardest other)", lambda r: r["vtm_accuracy_hard"]),
    ]
    rows += [(f"top-1 hit shares the query clip's {a} (%)", lambda r, a=a: 100 * attribute_agreement(r["t2v_tags"])[a])
             for a in DEMO_ATTRIBUTES]
    for name, get in rows:
        print(f"{name:<46}{get(retrieval['random init']):>12.1f}{get(retrieval['pretrained']):>12.1f}")
    print(f"{'classification top-1, frames only (best epoch)':<46}{finetune[('classify', 'random init')]:>12.1f}"
          f"{finetune[('classify', 'pretrained')]:>12.1f}")
    print(f"{'tagging mAP, frames only (best epoch)':<46}{finetune[('tagging', 'random init')]:>12.3f}"
          f"{finetune[('tagging', 'pretrained')]:>12.3f}")
    chance = 100 / retrieval["pretrained"]["videos"]
    print(f"(text→video R@1 by chance: {chance:.1f})")

    _section("a video store searched by text")
    store = runs / "video_store"
    _run([str(BIN / "mmpretrain-extract"), f"encoder={ckpt}", f"input={videos}/val.jsonl", f"output={store}",
          "trainer=cpu", "num_workers=2", "overwrite=true", f"hydra.run.dir={runs}/video_extract", *QUIET], root)
    index = runs / "video_index"
    _run([str(BIN / "mmpretrain-index"), "build", f"store={store}", f"output={index}", "index_key=Flat",
          "target_recall=null", *QUIET], root)  # fmt: skip
    print(_run([str(BIN / "mmpretrain-index"), "search", f"index={index}", "text='a red circle moving to the left'",
                "k=5", *QUIET], root))  # fmt: skip


def _demo_videos(root: Path) -> Path:
    videos = root / "data/video_demo"
    if not (videos / "val.jsonl").is_file():
        from mmpretrain.video.demo import make_demo_videos

        make_demo_videos(videos, per_class=60)
    return videos


# The screen of the video recipe: each row pretrains from scratch for the demo's 40 epochs. A row with `True` adds
# its change to the rows above it; `False` applies it to the row above alone (a comparison, not a step). The first
# row is the recipe before the motion work; the cumulative rows end at the demo's recipe.
ABLATION: tuple[tuple[str, list[str], bool], ...] = (
    ("per-frame tokens, title+OCR VTC text, constant weights", ["model.arch.temporal_stem=per_frame",
                                                               "model.arch.vtc_text=all", "model.loss_ramp=0"], True),
    ("+ tubelet stem", ["model.arch.temporal_stem=tubelet"], True),
    ("+ title-only VTC text", ["model.arch.vtc_text=title"], True),
    ("+ VTC first, the rest ramped in over 1/5 (the demo's recipe)", ["model.loss_ramp=0.2"], True),
    ("the demo's recipe with per_frame tokens", ["model.arch.temporal_stem=per_frame"], False),
)  # fmt: skip


def _ablation(root: Path, runs: Path, moby: Path, epochs: int | None, seed: int) -> None:
    """Pretrain once per row of `ABLATION`, evaluate held-out retrieval per attribute, print a Markdown table.

    The frames start from the image half's MoBY checkpoint when it exists (as in the demo), else at random."""
    from mmpretrain.video.demo import attribute_agreement

    videos = _demo_videos(root)
    init = ["model.frame_encoder=null", f"model.frame_init={moby}"] if moby.is_file() else []
    print(f"frame encoder: {moby if init else 'random init (no MoBY checkpoint)'}; seed {seed}")
    overrides: list[str] = [f"seed={seed}", *init]
    table = ["| recipe | t2v R@1 | t2v R@5 | v2t R@1 | colour | shape | direction | train CPU-s |",
             "|---|---|---|---|---|---|---|---|"]
    for i, (name, change, cumulative) in enumerate(ABLATION):
        row = overrides + change
        overrides = row if cumulative else overrides
        folder = runs / f"video_ablation/seed{seed}/{i}"
        shutil.rmtree(folder, ignore_errors=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        _run([str(BIN / "mmpretrain-train"), "experiment=video_fusion_demo", f"paths.data_dir={root}/data",
              f"hydra.run.dir={folder}/train", "trainer.enable_progress_bar=false", *row,
              *([f"trainer.max_epochs={epochs}", "trainer.check_val_every_n_epoch=1",
                 "callbacks.last_checkpoint.every_n_epochs=1"] if epochs else []),
              *QUIET], root)  # fmt: skip
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        rows = [(name, "false"), ("  the same at random init", "true")]
        for label, random_init in rows:
            out = folder / f"retrieval_{random_init}"
            _run([str(BIN / "mmpretrain-eval"), "task=retrieval", f"encoder={folder}/train/checkpoints/last.ckpt",
                  f"random_init={random_init}", f"data.manifest={videos}/val.jsonl", "task.rerank_k=0",
                  f"hydra.run.dir={out}", *QUIET], root)  # fmt: skip
            r = json.loads((out / "metrics.json").read_text())
            agree = attribute_agreement(r["t2v_tags"])
            table.append(f"| {label} | {r['t2v']['R@1']:.1f} | {r['t2v']['R@5']:.1f} | {r['v2t']['R@1']:.1f} | "
                         f"{100 * agree['colour']:.0f} | {100 * agree['shape']:.0f} | {100 * agree['direction']:.0f} "
                         f"| {cpu if random_init == 'false' else 0:.0f} |")
            print(table[-1], flush=True)
    print("\n".join(table))


def _frames_only(manifest: Path) -> Path:
    """The manifest without titles and OCR: the demo titles name shape, colour and direction, so a fine-tuned model
    with text would read its labels instead of showing what pretraining taught the frame encoder."""
    from mmpretrain.video.io.manifest import read_video_manifest, write_video_manifest

    records = [{"id": r.id, "video": r.video, "label": r.label, "tags": list(r.tags)}
               for r in read_video_manifest(manifest)]
    return write_video_manifest(records, manifest.with_name(f"{manifest.stem}_frames_only.jsonl"))


def _best(metrics_csv: Path, key: str) -> float:
    """The best value of a validation metric over a run's CSV log."""
    import csv

    with metrics_csv.open(newline="") as f:
        values = [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
    if not values:
        raise SystemExit(f"{metrics_csv} has no {key}")
    return max(values)


def _find(record: dict, method: str, shots: int) -> dict:
    """The result for one method and shot count in a fewshot.json."""
    return record["results"][method][str(shots)]


if __name__ == "__main__":
    main()
