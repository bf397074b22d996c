"""Benchmark mmpretrain-serve over real HTTP on loopback; one JSON line per part.

- ``embed``: ``/v1/embed`` throughput with N concurrent clients sending one image each, against ``encode_images``
  on the same files in batches of ``max_batch`` in the same run (target: >= 0.8x once N >= max batch), p50/p99.
- ``search``: ``/v1/search`` latency p50/p99 by vector on an IVF index of clustered vectors (1M by default), beside
  the same searches in-process.
- ``mixed``: clients sending one bad request in ten (garbage, empty, wrong type, too many pixels, unknown route) for
  a while: no error on a good request, every bad one a 4xx, the server's resident memory before and after.
- ``litserve``: the same one-image load against a LitServe server running the same encoder (why FastAPI; needs
  ``pip install litserve``, else the part says it skipped).

The model is a MoBY Swin-T at 224 px with random weights built from its config (no download; throughput does not
depend on the weight values), or ``--encoder <any source>``.

    python scripts/bench_serve.py                              # all parts, short
    python scripts/bench_serve.py --part embed --clients 32 --max-batch 16 --seconds 60
    python scripts/bench_serve.py --part search --vectors 1000000
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import io
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests

TARGET_RATIO = 0.8
PARTS = ("embed", "search", "mixed", "litserve")


def make_checkpoint(path: Path, tiny: bool) -> Path:
    """A MoBY Lightning checkpoint with random weights: Swin-T at 224 px, or a tiny Swin at 32 px."""
    import pytorch_lightning as pl
    import torch

    from mmpretrain.ssl import MoBY

    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"backbone": "swin_tiny_patch4_window7_224", "proj_hidden_dim": 512, "proj_dim": 128,
                              "queue_len": 256}
    if tiny:
        backbone = {"img_size": 32, "embed_dim": 24, "depths": [1, 1, 2, 1], "num_heads": [1, 1, 2, 2],
                    "window_size": 2}
        kwargs.update(backbone_kwargs=backbone, image_size=32, proj_hidden_dim=64, proj_dim=16)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(MoBY(**kwargs))
    trainer.save_checkpoint(path)
    return path


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Server:
    """A server process (mmpretrain-serve, or this script's LitServe mode) on a loopback port."""

    def __init__(self, command: list[str], ready_word: str, url: str | None = None, timeout: float = 600) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url = url
        deadline = time.monotonic() + timeout
        lines, ready = [], False
        for line in self.process.stderr:
            lines.append(line)
            if ready_word in line:
                ready = True
                if self.url is None:
                    self.url = line.split("listening on ", 1)[1].split()[0]
                break
            if time.monotonic() > deadline:
                break
        if not ready:
            self.process.kill()
            raise SystemExit("server did not start:\n" + "".join(lines[-20:]))
        threading.Thread(target=lambda: [None for _ in self.process.stderr], daemon=True).start()
        self._wait_healthy(deadline)

    def _wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if requests.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.url}/health never answered")

    def stop(self) -> int:
        """SIGTERM, then make sure no worker process it spawned outlives it."""
        children = _children(self.process.pid)
        self.process.terminate()
        code = self.process.wait(120)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return code


def serve(encoder: str, *args: str) -> Server:
    return Server([sys.executable, "-m", "mmpretrain", "serve", f"encoder={encoder}", "port=0", *args],
                  "listening on")


def load(send: Callable[[requests.Session, int], tuple[bool, Any]], clients: int, seconds: float,
         warmup: float) -> dict[str, Any]:
    """``clients`` threads calling ``send(session, i)`` for ``warmup + seconds``; count and time the measured part."""
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    outcomes: list[Any] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        session, i = requests.Session(), worker
        while True:
            tic = time.perf_counter()
            if tic >= stop_at:
                return
            ok, outcome = send(session, i)
            toc = time.perf_counter()
            if tic >= measure_from:
                with lock:
                    latencies.append(toc - tic)
                    outcomes.append((ok, outcome))
            i += clients

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return {"count": len(latencies), "rate": len(latencies) / seconds, "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "outcomes": outcomes}


def offline_rate(encoder: Any, paths: list[Path], batch: int, seconds: float) -> tuple[float, float]:
    """Images per wall second and per CPU second of ``encode_images`` on the files (decoding included), in batches
    of ``batch``."""
    encoder.encode_images(paths[:batch], batch_size=batch)  # warm-up
    done, tic, cpu = 0, time.perf_counter(), own_cpu_seconds()
    while time.perf_counter() - tic < seconds:
        encoder.encode_images([paths[(done + j) % len(paths)] for j in range(batch)], batch_size=batch)
        done += batch
    return done / (time.perf_counter() - tic), done / (own_cpu_seconds() - cpu)


def images(root: Path, count: int = 64) -> list[Path]:
    from mmpretrain.data import make_demo_images

    make_demo_images(root, num_classes=4, train_per_class=count // 4, val_per_class=1, size=256)
    return sorted((root / "train").rglob("*.png"))


def bench_embed(args: argparse.Namespace, encoder: str, paths: list[Path]) -> dict[str, Any]:
    """Offline, served, offline again: the offline figure is the mean of the two runs around the served one, so a
    change in the machine's load during the run falls on both sides alike."""
    from mmpretrain import load_encoder

    model = load_encoder(encoder, device="cpu", progress=False)
    before = offline_rate(model, paths, args.max_batch, args.seconds)
    blobs = [p.read_bytes() for p in paths]
    server = serve(encoder, f"max_batch={args.max_batch}", f"max_wait_ms={args.max_wait_ms}")
    cpu0, own0 = cpu_seconds(server.process.pid), own_cpu_seconds()

    def send(session: requests.Session, i: int) -> tuple[bool, Any]:
        r = session.post(server.url + "/v1/embed", files=[("images", blobs[i % len(blobs)])], timeout=120)
        return r.status_code == 200, None

    result = load(send, args.clients, args.seconds, args.warmup)
    served_cpu, client_cpu = cpu_seconds(server.process.pid) - cpu0, own_cpu_seconds() - own0
    metrics = requests.get(server.url + "/metrics", timeout=30).text
    server.stop()
    after = offline_rate(model, paths, args.max_batch, args.seconds)
    offline, offline_per_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    samples = {line.split()[0]: float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("mmpretrain_serve_batch_size_")}
    mean_batch = samples["mmpretrain_serve_batch_size_sum"] / max(samples["mmpretrain_serve_batch_size_count"], 1)
    ratio = result["rate"] / offline
    # served images per CPU-second of the server (warm-up included, so this slightly understates the server)
    per_cpu = (result["count"] + result["rate"] * args.warmup) / served_cpu if served_cpu else float("nan")
    return {"bench": "serve_embed", "clients": args.clients, "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms, "served_img_s": round(result["rate"], 2),
            "offline_img_s": round(offline, 2), "offline_img_s_before_after": [round(before[0], 2), round(after[0], 2)],
            "ratio": round(ratio, 3), "p50_ms": round(result["p50_ms"], 1), "p99_ms": round(result["p99_ms"], 1),
            "mean_batch": round(mean_batch, 2), "errors": sum(not ok for ok, _ in result["outcomes"]),
            "requests": result["count"], "served_img_per_cpu_s": round(per_cpu, 2),
            "offline_img_per_cpu_s": round(offline_per_cpu, 2), "cpu_ratio": round(per_cpu / offline_per_cpu, 3),
            "server_cpu_s": round(served_cpu, 1), "client_cpu_s": round(client_cpu, 1), "seconds": args.seconds,
            "meets_target": bool(ratio >= TARGET_RATIO) if args.clients >= args.max_batch else None}


def bench_search(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_retrieval import clustered

    from mmpretrain.embeddings import open_store, write_store
    from mmpretrain.retrieval import build_index

    tmp.mkdir(parents=True, exist_ok=True)
    encoder = make_checkpoint(tmp / "tiny.ckpt", tiny=True)
    from mmpretrain import load_encoder

    dim = load_encoder(encoder, device="cpu", progress=False).embed_dim
    x, queries = clustered(args.vectors, args.queries, dim, 1000, 16, 0.1, 0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.char.add("item-", np.arange(len(x)).astype(str))
    write_store(tmp / "store", x, {"id": ids, "label": np.char.add("c", (np.arange(len(x)) % 100).astype(str))},
                "bench", normalized=True, shard_size=250_000)
    del x
    tic = time.perf_counter()
    index = build_index(open_store(tmp / "store", verify="counts"), index_key=args.index_key, target_recall=0.95,
                        progress=False)
    build_s = time.perf_counter() - tic
    index.save(tmp / "index")
    local = []
    for q in queries:
        tic = time.perf_counter()
        index.search(q[None], 10)
        local.append(time.perf_counter() - tic)
    server = serve(str(encoder), f"index={tmp / 'index'}")
    rss = rss_mb(server.process.pid)
    bodies = [json.dumps({"vector": q.tolist(), "k": 10}) for q in queries]

    def send(session: requests.Session, i: int) -> tuple[bool, Any]:
        r = session.post(server.url + "/v1/search", data=bodies[i % len(bodies)], timeout=60,
                         headers={"Content-Type": "application/json"})
        return r.status_code == 200 and len(r.json()["hits"]) == 10, None

    result = load(send, 1, args.search_seconds, 1.0)
    floor = load(lambda session, i: (session.get(server.url + "/health", timeout=60).status_code == 200, None), 1,
                 5.0, 1.0)
    server.stop()
    return {"bench": "serve_search", "vectors": args.vectors, "dim": dim, "index_key": index.index_key,
            "search_params": index.search_params, "k": 10, "build_s": round(build_s, 1),
            "p50_ms": round(result["p50_ms"], 2), "p99_ms": round(result["p99_ms"], 2),
            "in_process_p50_ms": round(percentile(local, 50) * 1000, 2),
            "in_process_p99_ms": round(percentile(local, 99) * 1000, 2),
            "health_p50_ms": round(floor["p50_ms"], 2), "requests": result["count"],
            "errors": sum(not ok for ok, _ in result["outcomes"]), "server_rss_mb": round(rss)}


def bad_requests(url: str) -> list[Callable[[requests.Session], requests.Response]]:
    """One request of each bad kind the mixed load sends."""
    from PIL import Image

    huge = io.BytesIO()
    Image.new("1", (9000, 9000)).save(huge, "PNG")
    huge_png = huge.getvalue()
    return [
        lambda s: s.post(url + "/v1/embed", files=[("images", b"\x89PNG garbage" * 20)], timeout=60),
        lambda s: s.post(url + "/v1/embed", json={"images": []}, timeout=60),
        lambda s: s.post(url + "/v1/embed", data=b"x", headers={"Content-Type": "text/plain"}, timeout=60),
        lambda s: s.post(url + "/v1/embed", files=[("images", huge_png)], timeout=60),
        lambda s: s.get(url + "/v1/nowhere", timeout=60),
    ]


def bench_mixed(args: argparse.Namespace, encoder: str, paths: list[Path]) -> dict[str, Any]:
    blobs = [p.read_bytes() for p in paths]
    server = serve(encoder, f"max_batch={args.max_batch}", f"max_wait_ms={args.max_wait_ms}", "max_pixels=50000000")
    bad = bad_requests(server.url)
    for i in range(len(bad) * 2):  # warm every path once before the memory reading
        bad[i % len(bad)](requests.Session())
    rss_start = rss_mb(server.process.pid)
    samples = []

    def send(session: requests.Session, i: int) -> tuple[bool, Any]:
        if i % 10 == 9:
            r = bad[(i // 10) % len(bad)](session)
            return 400 <= r.status_code < 500, "bad"
        r = session.post(server.url + "/v1/embed", files=[("images", blobs[i % len(blobs)])], timeout=120)
        if i % 50 == 0:
            samples.append(rss_mb(server.process.pid))
        return r.status_code == 200, "good"

    result = load(send, args.clients, args.mixed_seconds, args.warmup)
    rss_end = rss_mb(server.process.pid)
    alive = requests.get(server.url + "/health", timeout=30).status_code == 200
    server.stop()
    good = [ok for ok, kind in result["outcomes"] if kind == "good"]
    bad_ok = [ok for ok, kind in result["outcomes"] if kind == "bad"]
    half = len(samples) // 2
    return {"bench": "serve_mixed", "seconds": args.mixed_seconds, "clients": args.clients,
            "good_requests": len(good), "good_errors": good.count(False), "bad_requests": len(bad_ok),
            "bad_not_4xx": bad_ok.count(False), "rss_start_mb": round(rss_start), "rss_end_mb": round(rss_end),
            "rss_first_half_median_mb": round(statistics.median(samples[:half])) if half else None,
            "rss_second_half_median_mb": round(statistics.median(samples[half:])) if half else None,
            "healthy_after": alive, "p50_ms": round(result["p50_ms"], 1), "p99_ms": round(result["p99_ms"], 1)}


def bench_litserve(args: argparse.Namespace, encoder: str, paths: list[Path]) -> dict[str, Any]:
    bodies = [json.dumps({"image": base64.b64encode(p.read_bytes()).decode()}) for p in paths]
    json_header = {"Content-Type": "application/json"}
    out: dict[str, Any] = {"bench": "serve_framework", "clients": args.clients, "max_batch": args.max_batch}
    from mmpretrain.serve.server import bind

    probe = bind("127.0.0.1", 0)
    port = probe.getsockname()[1]
    probe.close()
    servers = {
        "fastapi": lambda: serve(encoder, f"max_batch={args.max_batch}", f"max_wait_ms={args.max_wait_ms}"),
        "litserve": lambda: Server([sys.executable, __file__, "--litserve-worker", encoder, str(port),
                                    str(args.max_batch), str(args.max_wait_ms)], "listening",
                                   url=f"http://127.0.0.1:{port}"),
    }
    for name, start in servers.items():
        server = start()
        route = "/v1/embed" if name == "fastapi" else "/predict"
        payloads = ([json.dumps({"images": [json.loads(b)["image"]]}) for b in bodies] if name == "fastapi"
                    else bodies)
        pids = [server.process.pid, *_children(server.process.pid)]
        cpu0 = sum(cpu_seconds(p) for p in pids)

        def send(session: requests.Session, i: int, url: str = server.url + route, data: list = payloads) -> tuple:
            r = session.post(url, data=data[i % len(data)], headers=json_header, timeout=120)
            return r.status_code == 200, None

        result = load(send, args.clients, args.seconds, args.warmup)
        cpu = sum(cpu_seconds(p) for p in pids if Path(f"/proc/{p}").exists()) - cpu0
        server.stop()
        out.update({f"{name}_img_s": round(result["rate"], 2), f"{name}_p50_ms": round(result["p50_ms"], 1),
                    f"{name}_p99_ms": round(result["p99_ms"], 1), f"{name}_cpu_s": round(cpu, 1),
                    f"{name}_errors": sum(not ok for ok, _ in result["outcomes"])})
    out["fastapi_over_litserve"] = round(out["fastapi_img_s"] / out["litserve_img_s"], 3)
    return out


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (LitServe's API server and inference workers are child processes)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        path = Path(f"/proc/{parent}/task/{parent}/children")
        kids = [int(c) for c in path.read_text().split()] if path.exists() else []
        found += kids
        frontier += kids
    return found


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--litserve-worker":
        from _litserve_api import run

        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=(*PARTS, "all"), default="all")
    parser.add_argument("--encoder", default=None, help="any source load_encoder reads (default: Swin-T, random)")
    parser.add_argument("--tiny", action="store_true", help="a 32-px tiny Swin instead of Swin-T (fast; HTTP-bound)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent one-image clients")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds of each throughput run")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--vectors", type=int, default=1_000_000, help="indexed vectors of the search part")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--index-key", default="IVF1024,Flat")
    parser.add_argument("--search-seconds", type=float, default=15.0)
    parser.add_argument("--mixed-seconds", type=float, default=60.0)
    args = parser.parse_args()
    parts = PARTS if args.part == "all" else (args.part,)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        encoder = args.encoder or str(make_checkpoint(root / "model.ckpt", tiny=args.tiny))
        paths = images(root / "images") if set(parts) - {"search"} else []
        for part in parts:
            if part == "embed":
                result = bench_embed(args, encoder, paths)
            elif part == "search":
                result = bench_search(args, root / "search")
            elif part == "mixed":
                result = bench_mixed(args, encoder, paths)
            elif importlib.util.find_spec("litserve") is None:
                result = {"bench": "serve_framework", "skipped": "LitServe is not installed: pip install litserve"}
            else:
                result = bench_litserve(args, encoder, paths)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
