"""Benchmark one MoBY training step against the work it cannot avoid.

Prints one JSON line: images/s of a full MoBY step (Swin-T, 224 px, batch 8, CPU by default) and the ratio of
that step's time to the sum of its unavoidable parts measured in the same run: the online backbone's forward and
backward on both views plus the target backbone's forward on both views. Everything else (heads, loss, EMA
update, queue, AdamW step) is overhead; target ratio <= 1.10. Peak resident memory is reported too.

    python scripts/bench_moby.py [--batch 8] [--size 224] [--repeats 7] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource

import torch
from _timing import time_pair

from mmpretrain.ssl import MoBY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="swin_tiny_patch4_window7_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = args.device
    model = MoBY(backbone=args.backbone, queue_len=4096).to(device).train()
    optimizer = model.build_optimizer(lr=1e-4)
    x1 = torch.randn(args.batch, 3, args.size, args.size, device=device)
    x2 = torch.randn(args.batch, 3, args.size, args.size, device=device)

    def full_step() -> None:
        loss, key_1, key_2 = model.moby_step(x1, x2, momentum=0.99)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        model.queue1.enqueue(key_1)
        model.queue2.enqueue(key_2)

    dim = model.embed_dim
    dense_grads = [torch.randn(args.batch, dim, device=device) for _ in range(2)]

    def unavoidable() -> None:
        # The same batching of views as the step (one pass of both views for LayerNorm backbones), and a dense
        # gradient into the features: `h.sum().backward()` would feed a stride-0 tensor of ones, which makes the
        # backbone's backward artificially cheap on CPU.
        with torch.no_grad():
            model._encode_views(model.target_backbone, x1, x2)
        h1, h2 = model._encode_views(model.backbone, x1, x2)
        torch.autograd.backward([h1, h2], dense_grads)
        model.zero_grad(set_to_none=True)

    step_s, parts_s = time_pair(full_step, unavoidable, args.repeats, device)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    print(
        json.dumps(
            {
                "bench": "moby_step",
                "backbone": args.backbone,
                "device": device,
                "batch": args.batch,
                "image_size": args.size,
                "threads": args.threads,
                "step_s": round(step_s, 4),
                "images_per_s": round(args.batch / step_s, 3),
                "unavoidable_s": round(parts_s, 4),
                "ratio_to_unavoidable": round(step_s / parts_s, 4),
                "target_ratio": 1.10,
                "peak_memory_mb": round(peak_mb, 1),
                "repeats": args.repeats,
                "statistic": "median",
            }
        )
    )


if __name__ == "__main__":
    main()
