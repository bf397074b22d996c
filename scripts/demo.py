"""`make demo`: the project end to end on a CPU, on real handwriting and generated videos; nothing is downloaded.

Images, the question "I only have one picture per class, how do I get a model that works?" on Omniglot's
handwriting (vendored, MIT licence):

1. Pretrains `experiment=moby_small` without labels on three alphabets (Greek, Latin, Tagalog), by a step budget.
2. `mmpretrain-fewshot estimate`: how good a one-shot classifier of a held-out alphabet (Japanese katakana) will be,
   from three labelled drawings per character, for raw pixels, the same Swin at random init, and MoBY.
3. `fit` one-shot classifiers on one drawing per character, `predict` the other drawings: the measured accuracy
   beside the estimate and its 95% CI.
4. An unknown threshold that keeps 95% of the labelled drawings not fitted on (or, shown beside it, rejects 90% of
   the pretraining alphabets' drawings): how many drawings of an alphabet never seen (Sanskrit) come back
   "unknown", and how many known ones are wrongly rejected.
5. `suggest` what to label next, `export` to ONNX and predict the same drawings with onnxruntime, and a contact
   sheet of predictions (logs/demo/omniglot/predictions.png).

Videos:

6. Writes the demo videos (moving shapes with titles and rendered OCR, H.264 MP4 and MPEG-4 AVI), pretrains the
   video–text model (`experiment=video_fusion_demo`: a small ResNet at 64 px, MVM, MTM, VTM, VTC), and compares it
   with random init on held-out text↔video retrieval (VTC, then VTM re-ranking) per attribute, classification and
   tagging fine-tuning; then searches a video store by text.

Every step runs through the console entry point a user would call; each half prints its wall time and CPU time.
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
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

BIN = Path(sys.executable).parent
QUIET = ["extras.print_config=false"]
#: MoBY steps on the three pretraining alphabets (1,340 drawings, batch 64: about 30 epochs)
STEPS = 600
#: the demo's unknown threshold keeps this share of labelled drawings of known characters (the library's default)
ACCEPT_RATE = 0.95
#: the other threshold rule shown: reject this share of unlabelled drawings of the pretraining alphabets
REJECT_OTHERS = 0.9
T = TypeVar("T")


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
    parser.add_argument("--steps", type=int, default=STEPS, help="MoBY steps on the Omniglot alphabets")
    parser.add_argument("--characters", type=int, default=None,
                        help="keep the first characters of each alphabet only (a tiny run)")
    parser.add_argument("--skip-images", action="store_true", help="only the video part")
    parser.add_argument("--skip-videos", action="store_true", help="only the image part")
    parser.add_argument("--ablation", action="store_true",
                        help="instead of the video part, pretrain once per video recipe row (docs/results-video.md)")
    parser.add_argument("--ablation-epochs", type=int, default=None, help="override the video epochs (smoke runs)")
    parser.add_argument("--ablation-seed", type=int, default=42, help="the seed of every --ablation training")
    args = parser.parse_args()
    root = args.root.resolve()
    runs = root / "logs/demo"
    started = time.time()
    if not args.skip_images:
        _timed("image half", lambda: _images(root, runs, args.steps, args.characters))
    if args.ablation:
        _ablation(root, runs, args.ablation_epochs, args.ablation_seed)
    elif not args.skip_videos:
        _timed("video half", lambda: _videos(root, runs))
    print(f"\ndemo done in {time.time() - started:.0f} s")


def _timed(name: str, step: Callable[[], T]) -> T:
    """Run ``step``; print its wall time and the CPU time of the commands it ran (the machine may be shared)."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = step()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"[{name}: {time.perf_counter() - start:.0f} s wall, {cpu:.0f} CPU-s]", flush=True)
    return result


def _images(root: Path, runs: Path, steps: int, characters: int | None = None) -> None:
    """The seed's story on real handwriting, through the console scripts a user would call.

    Pretrain `moby_small` without labels on three Omniglot alphabets; estimate how good a one-shot classifier of a
    held-out alphabet will be (raw pixels, random init, MoBY); fit one on one drawing per character and measure it on
    the others; reject an alphabet never fitted; suggest what to label next; export to ONNX and check onnxruntime
    agrees; draw a contact sheet of predictions.
    """
    from mmpretrain.data.demo import omniglot_demo

    out = runs / "omniglot"
    shutil.rmtree(out, ignore_errors=True)  # a rerun must not read an earlier run's predictions
    _section("real handwriting: Omniglot images_background_small2 (MIT licence, ships with the package)")
    split = omniglot_demo(root / "data/omniglot", out / "lists", characters=characters)
    n = {name: len(getattr(split, name).read_text().splitlines())
         for name in ("pretrain", "support", "labelled", "queries", "others", "unknown")}
    print(f"pretraining: {n['pretrain']} unlabelled drawings of Greek, Latin and Tagalog\n"
          f"{split.known}: {n['support']} characters; one labelled drawing of each to fit on, {n['labelled']} "
          f"labelled ({n['labelled'] // n['support']} each) to estimate with, {n['queries']} other drawings to "
          f"predict\nSanskrit, never seen: {n['unknown']} drawings to reject")

    _section(f"MoBY pretraining without labels (experiment=moby_small, {steps} steps)")
    _run([str(BIN / "mmpretrain-train"), "experiment=moby_small", f"data.file_list={_q(split.pretrain)}",
          f"trainer.max_steps={steps}", "trainer.max_epochs=-1", f"hydra.run.dir={_q(out / 'train')}",
          "trainer.enable_progress_bar=false", *QUIET], root)
    ckpt = out / "train/checkpoints/last.ckpt"
    print(f"checkpoint: {ckpt}")
    encoders = {"raw pixels": "pixels:28", "random init": f"random:{ckpt}", "MoBY": str(ckpt)}

    _section(f"estimate on the {n['labelled']} labelled drawings: leave-one-out and the learning curve")
    _fewshot(["estimate", f"support={_q(split.labelled)}", f"encoder=[{','.join(_q(e) for e in encoders.values())}]",
              "shots=[1,2]", f"output={_q(out / 'estimate')}"], root)
    estimates = json.loads((out / "estimate/estimate.json").read_text())["estimates"]
    print((out / "estimate/estimate.md").read_text().strip())

    _section(f"one-shot classifiers fitted on {n['support']} drawings, measured on the {n['queries']} others")
    queries, others, unknown = _paths(split.queries), _paths(split.others), _paths(split.unknown)
    support = {line.split("\t")[0] for line in _paths(split.support)}
    held = [line.split("\t")[0] for line in _paths(split.labelled) if line.split("\t")[0] not in support]
    scored = _file_list(out / "lists/scored.txt", queries + held + others + unknown)
    measured, scores = {}, {}
    for label, spec in encoders.items():
        folder = out / f"one_shot_{label.replace(' ', '_')}"
        _fewshot(["fit", f"support={_q(split.support)}", f"encoder={_q(spec)}", f"output={_q(folder)}"], root)
        scores[label] = _predict(folder, scored, out / f"{folder.name}.jsonl", root)
        measured[label] = 100 * sum(_top(scores[label][p]) == _character(p) for p in queries) / len(queries)
    print(f"{'encoder':<14}{'estimated 1-shot accuracy (95% CI)':>38}{'measured':>10}")
    for (label, est) in zip(encoders, estimates):
        point = next(p for p in est["curve"] if p["shots"] == 1)
        low, high = point["accuracy"] - point["ci95"], point["accuracy"] + point["ci95"]
        inside = "inside" if low <= measured[label] <= high else "outside"
        print(f"{label:<14}{point['accuracy']:>25.1f} ({low:.1f}–{high:.1f}){measured[label]:>10.1f}  {inside}")
    print(f"(chance: {100 / n['support']:.1f}; the estimate draws one labelled drawing per character as the support "
          "and predicts the others, 20 times)")

    _section("\"none of these\": where to put the unknown threshold (MoBY, similarity to the nearest character)")
    similarity = {p: r["similarity"] for p, r in scores["MoBY"].items()}
    rules = {f"keep {100 * ACCEPT_RATE:.0f}% of the {len(held)} labelled drawings not fitted on":
             float(np.quantile([similarity[p] for p in held], 1 - ACCEPT_RATE)),
             f"reject {100 * REJECT_OTHERS:.0f}% of {len(others)} drawings of the pretraining alphabets":
             float(np.quantile([similarity[p] for p in others], REJECT_OTHERS))}
    print(f"{'threshold rule':<62}{'threshold':>10}{'known rejected':>16}{'Sanskrit rejected':>19}")
    for rule, value in rules.items():
        known_out = 100 * np.mean([similarity[p] < value for p in queries])
        unknown_out = 100 * np.mean([similarity[p] < value for p in unknown])
        print(f"{rule:<62}{value:>10.3f}{known_out:>15.1f}%{unknown_out:>18.1f}%")
    threshold = next(iter(rules.values()))
    classifier = out / "classifier"
    _fewshot(["fit", f"support={_q(split.support)}", f"encoder={_q(ckpt)}", f"threshold={threshold:.6f}",
              f"output={_q(classifier)}"], root)
    preds = _predict(classifier, _file_list(out / "lists/test.txt", queries + unknown), out / "predictions.jsonl", root)
    known_out = sum(preds[p]["predicted"] == "unknown" for p in queries)
    accepted = [p for p in queries if preds[p]["predicted"] != "unknown"]
    right = sum(preds[p]["predicted"] == _character(p) for p in accepted)
    unknown_out = sum(preds[p]["predicted"] == "unknown" for p in unknown)
    print(f"the classifier, fitted with threshold={threshold:.3f} (the first rule), then predict:")
    print(f"{split.known} drawings (known characters) called unknown: {known_out} of {len(queries)} "
          f"({100 * known_out / len(queries):.1f}%); accuracy on the accepted ones: "
          f"{100 * right / max(len(accepted), 1):.1f}%")
    print(f"Sanskrit drawings (never fitted) called unknown: {unknown_out} of {len(unknown)} "
          f"({100 * unknown_out / len(unknown):.1f}%)")

    _section("what to label next (margin and diversity over the drawings not yet labelled)")
    _fewshot(["suggest", f"classifier={_q(classifier)}", f"pool={_q(split.queries)}", "n=10",
              f"output={_q(out / 'suggest')}"], root)
    for line in (out / "suggest/suggest.jsonl").read_text().splitlines():
        r = json.loads(line)
        print(f"{r['rank']:>3}. {Path(r['path']).relative_to(split.root)}  predicted {r['predicted']}, "
              f"margin {r['margin']:.2f}")
    print(f"contact sheet: {out / 'suggest/suggest.png'}")

    _section("export to ONNX, and the same predictions from onnxruntime")
    onnx = out / "classifier.onnx"
    _fewshot(["export", f"classifier={_q(classifier)}", "format=onnx", f"output={_q(onnx)}"], root)
    sample = [*queries[:: max(1, len(queries) // 48)], *unknown[:: max(1, len(unknown) // 16)]]
    agree, diff = _onnx_agreement(onnx, sample, preds)
    print(f"{onnx}: onnxruntime gives the same prediction as predict for {agree} of {len(sample)} drawings "
          f"(largest probability difference {diff:.1e})")

    sheet = _prediction_sheet(queries, unknown, preds, out / "predictions.png")
    print(f"contact sheet of predictions: {sheet}")
    print(f"\none-shot top-1 on {split.known}: MoBY {measured['MoBY']:.1f}, random init "
          f"{measured['random init']:.1f}, raw pixels {measured['raw pixels']:.1f}")


def _fewshot(args: list[str], root: Path) -> str:
    return _run([str(BIN / "mmpretrain-fewshot"), *args, "progress=false", *QUIET], root)


def _predict(classifier: Path, input: Path, output: Path, root: Path) -> dict[str, dict]:
    """`mmpretrain-fewshot predict`; its records by path."""
    _fewshot(["predict", f"classifier={_q(classifier)}", f"input={_q(input)}", f"output={_q(output)}", "top_k=3"],
             root)
    return {r["path"]: r for r in map(json.loads, output.read_text().splitlines())}


def _paths(file_list: Path) -> list[str]:
    return file_list.read_text().splitlines()


def _file_list(path: Path, paths: list[str]) -> Path:
    path.write_text("".join(f"{p}\n" for p in paths))
    return path


def _character(path: str) -> str:
    return Path(path).parent.name


def _top(record: dict) -> str:
    """The most probable class, whatever the threshold says."""
    return record["labels"][0]["label"]


def _q(value: str | Path) -> str:
    """A path as a Hydra value, whatever characters it holds (Omniglot's folders have parentheses)."""
    from mmpretrain.cli.quoting import hydra_quote

    return hydra_quote(str(value))


def _onnx_agreement(onnx: Path, paths: list[str], preds: dict[str, dict]) -> tuple[int, float]:
    """Run the exported file with onnxruntime on ``paths``, preprocessed as its JSON says; how many predictions
    match `predict`'s, and the largest difference of the top classes' probabilities."""
    import onnxruntime
    from PIL import Image

    spec = json.loads(onnx.with_name(onnx.name + ".json").read_text())
    pre = spec["preprocessing"]
    mean, std = np.array(pre["mean"])[:, None, None], np.array(pre["std"])[:, None, None]
    batch = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        scale = pre["resize_short_side"] / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        left, top = (round((side - pre["center_crop"]) / 2) for side in image.size)
        image = image.crop((left, top, left + pre["center_crop"], top + pre["center_crop"]))
        batch.append((np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255 - mean) / std)
    session = onnxruntime.InferenceSession(str(onnx))
    probabilities, similarity = session.run(None, {pre["input"]: np.stack(batch).astype(np.float32)})
    agree, diff = 0, 0.0
    for path, p, s in zip(paths, probabilities, similarity):
        label = spec["classes"][int(p.argmax())] if s >= spec["threshold"] else "unknown"
        agree += label == preds[path]["predicted"]
        diff = max(diff, abs(float(p.max()) - preds[path]["labels"][0]["p"]))
    return agree, diff


def _prediction_sheet(queries: list[str], unknown: list[str], preds: dict[str, dict], path: Path) -> Path:
    """A PNG grid: 24 drawings of known characters and 8 of the unknown alphabet, each with what was predicted."""
    from PIL import Image

    from mmpretrain.fewshot.plots import contact_sheet

    picked = [*queries[:: max(1, len(queries) // 24)][:24], *unknown[:: max(1, len(unknown) // 8)][:8]]
    captions = []
    for p in picked:
        said = preds[p]["predicted"]
        truth = _character(p) if p in queries else "unknown"
        captions.append(f"{said}\n{'right' if said == truth else 'is ' + (truth if p in queries else 'Sanskrit')}")
    return contact_sheet([Image.open(p) for p in picked], captions, path, columns=8)


def _videos(root: Path, runs: Path) -> None:
    """Video–text pretraining on the demo videos, then retrieval and fine-tuning against random init.

    The frame encoder starts at random init and MVM regresses pixels: at this scale a MoBY frame init measured no
    better (docs/results-video.md), and skipping it saves its minute.
    """
    _section("demo videos")
    videos = _demo_videos(root)
    counts = {s: len((videos / f"{s}.jsonl").read_text().splitlines()) for s in ("train", "val")}
    print(f"{videos}: {counts['train']} train, {counts['val']} held-out videos")

    _section("video–text pretraining (experiment=video_fusion_demo)")
    _run([str(BIN / "mmpretrain-train"), "experiment=video_fusion_demo", f"paths.data_dir={root}/data",
          f"hydra.run.dir={runs}/video_train", "trainer.enable_progress_bar=false", *QUIET], root)
    ckpt = runs / "video_train/checkpoints/last.ckpt"
    print(f"checkpoint: {ckpt}")

    from mmpretrain.video.demo import DEMO_ATTRIBUTES, attribute_agreement

    _section("held-out text↔video retrieval: VTC through a FAISS index, then VTM re-ranking of each text's top 10")
    retrieval = {}
    for label, random_init in (("random init", "true"), ("pretrained", "false")):
        _run([str(BIN / "mmpretrain-eval"), "task=retrieval", f"encoder={ckpt}", f"random_init={random_init}",
              f"data.manifest={videos}/val.jsonl", f"hydra.run.dir={runs}/video_retrieval_{random_init}", *QUIET],
             root)
        retrieval[label] = json.loads((runs / f"video_retrieval_{random_init}/metrics.json").read_text())

    _section("fine-tuning on frames alone (titles name the labels) from the pretrained checkpoint vs random init: "
             "shape from 10 labelled videos per shape, tags from every training video; best epoch")
    frames_only = {split: _frames_only(videos / f"{split}.jsonl") for split in ("train", "val")}
    finetune = {}
    for task, experiment, metric in (("classify", "video_classify_few_demo", "val/top1"),
                                     ("tagging", "video_tagging_demo", "val/mAP")):
        for label, random_init in (("random init", "true"), ("pretrained", "false")):
            folder = runs / f"video_{task}_{random_init}"
            shutil.rmtree(folder, ignore_errors=True)  # a rerun must not read an earlier run's CSV log
            _run([str(BIN / "mmpretrain-train"), f"experiment={experiment}", f"model.pretrained={ckpt}",
                  f"model.random_init={random_init}", f"paths.data_dir={root}/data", "logger=csv",
                  f"data.train_manifest={frames_only['train']}", f"data.val_manifest={frames_only['val']}",
                  f"hydra.run.dir={folder}", "trainer.enable_progress_bar=false", *QUIET], root)
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
    print(f"{'shape top-1, 10 labelled videos a shape':<46}{finetune[('classify', 'random init')]:>12.1f}"
          f"{finetune[('classify', 'pretrained')]:>12.1f}")
    print(f"{'tagging mAP, every training video':<46}{finetune[('tagging', 'random init')]:>12.3f}"
          f"{finetune[('tagging', 'pretrained')]:>12.3f}")
    chance = 100 / retrieval["pretrained"]["videos"]
    print(f"(text→video R@1 by chance: {chance:.1f})")

    _section("a video store searched by text")
    store = runs / "video_store"
    _run([str(BIN / "mmpretrain-extract"), f"encoder={ckpt}", f"input={videos}/val.jsonl", f"output={store}",
          "trainer=cpu", "num_workers=2", "overwrite=true", f"hydra.run.dir={runs}/video_extract", *QUIET], root)
    index = runs / "video_index"
    _run([str(BIN / "mmpretrain-index"), "build", f"store={store}", f"output={index}", "index_key=Flat",
          "target_recall=null", *QUIET], root)
    print(_run([str(BIN / "mmpretrain-index"), "search", f"index={index}", "text='a red circle moving to the left'",
                "k=5", *QUIET], root))


def _demo_videos(root: Path) -> Path:
    videos = root / "data/video_demo"
    if not (videos / "val.jsonl").is_file():
        from mmpretrain.video.demo import make_demo_videos

        make_demo_videos(videos, per_class=60)
    return videos


# The screen of the video recipe: each row pretrains from scratch (random frames, MVM on pixels) with its experiment
# and overrides. The first row is the recipe before the motion work (per-frame tokens, title+OCR contrastive text,
# constant and equal weights) on the 32-px ViT.
BEFORE = ["model.arch.temporal_stem=per_frame", "model.arch.vtc_text=all", "model.loss_ramp=0", "model.vtc_exclude=[]",
          "model.loss_weights={vtc:1.0,vtm:1.0,mtm:1.0,mvm:1.0}"]
ABLATION: tuple[tuple[str, str, list[str]], ...] = (
    ("the recipe before, 32-px ViT", "video_fusion_demo_vit", BEFORE),
    ("the recipe, 32-px ViT", "video_fusion_demo_vit", []),
    ("the recipe, 64-px ResNet (the demo's)", "video_fusion_demo", []),
    ("the demo's with per_frame tokens", "video_fusion_demo", ["model.arch.temporal_stem=per_frame"]),
)


def _ablation(root: Path, runs: Path, epochs: int | None, seed: int) -> None:
    """Pretrain once per row of `ABLATION`, evaluate held-out retrieval per attribute, print a Markdown table.

    Random init is evaluated once per experiment and token layout (its figures do not depend on the training recipe).
    """
    from mmpretrain.video.demo import attribute_agreement

    videos = _demo_videos(root)
    print(f"seed {seed}")
    table = ["| recipe | t2v R@1 | t2v R@5 | v2t R@1 | colour | shape | direction | train CPU-s |",
             "|---|---|---|---|---|---|---|---|"]
    random_done: set[tuple[str, str]] = set()
    for i, (name, experiment, change) in enumerate(ABLATION):
        folder = runs / f"video_ablation/seed{seed}/{i}"
        shutil.rmtree(folder, ignore_errors=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        _run([str(BIN / "mmpretrain-train"), f"experiment={experiment}", f"paths.data_dir={root}/data",
              f"hydra.run.dir={folder}/train", "trainer.enable_progress_bar=false", f"seed={seed}", *change,
              *([f"trainer.max_epochs={epochs}", "trainer.check_val_every_n_epoch=1",
                 "callbacks.last_checkpoint.every_n_epochs=1"] if epochs else []),
              *QUIET], root)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        stem = next((o.split("=", 1)[1] for o in change if o.startswith("model.arch.temporal_stem=")), "tubelet")
        layout = (experiment, stem)
        evaluations = [(name, "false")] + ([(f"  random init, {experiment}, {stem}", "true")]
                                           if layout not in random_done else [])
        random_done.add(layout)
        for label, random_init in evaluations:
            out = folder / f"retrieval_{random_init}"
            _run([str(BIN / "mmpretrain-eval"), "task=retrieval", f"encoder={folder}/train/checkpoints/last.ckpt",
                  f"random_init={random_init}", f"data.manifest={videos}/val.jsonl", "task.rerank_k=0",
                  f"hydra.run.dir={out}", *QUIET], root)
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
