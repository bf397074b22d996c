"""Checkpoint hub: the registry, downloads over real HTTP on 127.0.0.1 (sha256, resume, offline, locks) and the
command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hub_support import (
    SWIN,
    TINY,
    _blob_registry,
    _official_moby_checkpoint,
    _resnet_file,
    _same_outputs,
    _Server,
    _sha,
    _tiny_swin,
    _training_checkpoint,
    _write_registry,
    blob,
    hub_env,
    server,
)

from mmpretrain import hub
from mmpretrain._io import sha256_file
from mmpretrain.cli.hub import main as hub_main

__all__ = ["blob", "hub_env", "server"]  # fixtures from hub_support, used by name (hub_env: autouse)

# ----------------------------------------------------------------------------------------------- registry


def test_builtin_registry_goes_by_file_name() -> None:
    entries = hub.load_registry()
    assert {"moby_swin_t_300ep", "moby_deit_small_300ep"} <= set(hub.list_pretrained())
    swin, deit = entries["moby_swin_t_300ep"], entries["moby_deit_small_300ep"]
    assert swin.url.endswith("/v1.0.3/moby_swin_t_300ep_pretrained.pth")
    assert swin.architecture["name"] == "swin_tiny_patch4_window7_224"
    assert deit.url.endswith("/v1.0.3/moby_deit_small_300ep_pretrained.pth")
    assert deit.architecture["name"] == "deit_small_patch16_224"
    assert swin.format == deit.format == "moby-official"
    assert swin.sha256 is None and swin.config()["preprocessing"]["image_size"] == 224


def test_user_registry_files_extend_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = _write_registry(
        tmp_path / "team.json",
        [{"name": "team_model", "url": "https://example.org/a/team.safetensors", "format": "mmpretrain",
          "architecture": {"name": SWIN, "kwargs": {"img_size": 32}}}],
    )
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text(
        textwrap.dedent(f"""\
        moby_swin_t_300ep:
          url: https://mirror.example.org/moby_swin_t_300ep_pretrained.pth
          format: moby-official
          architecture: {SWIN}
          sha256: {"ab" * 32}
        my_timm:
          url: file:///data/my_timm.pth
          format: timm
          architecture: {{name: resnet18, kwargs: {{}}}}
          preprocessing: {{image_size: 160}}
        """)
    )
    monkeypatch.setenv("MMPRETRAIN_REGISTRY", str(env_file))
    names = hub.list_pretrained(yaml_file)
    assert {"team_model", "my_timm", "moby_swin_t_300ep", "moby_deit_small_300ep"} <= set(names)
    entries = hub.load_registry(yaml_file)
    assert entries["moby_swin_t_300ep"].url.startswith("https://mirror.example.org/")
    assert entries["moby_swin_t_300ep"].sha256 == "ab" * 32
    assert entries["team_model"].config()["preprocessing"]["image_size"] == 32
    assert entries["my_timm"].config()["preprocessing"]["image_size"] == 160

    bad = _write_registry(
        tmp_path / "bad.json", {"x": {"url": "https://e.org/x.pth", "format": "pickle", "architecture": SWIN}}
    )
    with pytest.raises(ValueError, match=r"bad\.json.*'x'.*format 'pickle'"):
        hub.load_registry(bad)
    typo = _write_registry(
        tmp_path / "typo.json", {"x": {"url": "https://e.org/x.pth", "format": "timm", "arch": SWIN}}
    )
    with pytest.raises(ValueError, match=r"typo\.json.*unknown keys \['arch'\]"):
        hub.load_registry(typo)


# ----------------------------------------------------------------------------------------------- download


def test_download_then_cache_hit_with_server_stopped(
    server: _Server, blob: bytes, tmp_path: Path, hub_env: Path
) -> None:
    registry = _blob_registry(tmp_path, server.serve("/files/blob.pth", blob), _sha(blob))
    path = hub.download("blob", registry=registry, progress=False)
    assert path.read_bytes() == blob
    assert path.is_relative_to(hub_env / "checkpoints") and path.name == "blob.pth"
    assert not path.with_name("blob.pth.part").exists()
    assert len(server.gets("/files/blob.pth")) == 1

    server.stop()
    assert hub.download("blob", registry=registry, progress=False, retries=0) == path

    with pytest.raises(hub.DownloadError, match="after 1 attempts"):  # the server is really gone
        hub.download(server.url("/files/blob.pth"), cache_dir=tmp_path / "c", retries=0, progress=False)


def test_unknown_hash_is_recorded(server: _Server, blob: bytes, tmp_path: Path) -> None:
    path = hub.download(server.serve("/u/x.bin", blob), progress=False)
    assert path.with_name("x.bin.sha256").read_text().split()[0] == _sha(blob)
    assert hub.verify(path) == _sha(blob)


def test_sha256_mismatch_raises_and_removes_bad_file(server: _Server, blob: bytes, tmp_path: Path) -> None:
    registry = _blob_registry(tmp_path, server.serve("/files/blob.pth", blob), "0" * 64)
    with pytest.raises(hub.ChecksumError) as info:
        hub.download("blob", registry=registry, progress=False)
    assert "0" * 64 in str(info.value) and _sha(blob) in str(info.value)
    folder = hub.hub_cache_dir() / "names" / "blob"
    assert not (folder / "blob.pth").exists() and not (folder / "blob.pth.part").exists()


def test_resume_from_partial_file_uses_range(server: _Server, blob: bytes, tmp_path: Path) -> None:
    registry = _blob_registry(tmp_path, server.serve("/files/blob.pth", blob), _sha(blob))
    server.truncate_next = 1
    with pytest.raises(hub.DownloadError, match="after 1 attempts"):
        hub.download("blob", registry=registry, progress=False, retries=0)
    part = hub.hub_cache_dir() / "names" / "blob" / "blob.pth.part"
    assert part.stat().st_size == len(blob) // 2
    path = hub.download("blob", registry=registry, progress=False)
    assert path.read_bytes() == blob
    second = server.gets("/files/blob.pth")[1]
    assert second["range"] == f"bytes={len(blob) // 2}-" and second["if_range"] == f'"{_sha(blob)[:16]}"'
    assert not part.exists() and not part.with_name("blob.pth.part.json").exists()


def test_part_of_another_file_is_never_spliced(server: _Server, blob: bytes, tmp_path: Path) -> None:
    """A ``.part`` started from an older version of the URL restarts (If-Range), one with no record too."""
    url = server.serve("/files/v.pth", blob)
    server.truncate_next = 1
    with pytest.raises(hub.DownloadError):
        hub.download(url, progress=False, retries=0)
    newer = os.urandom(len(blob))
    server.files["/files/v.pth"] = newer
    assert hub.download(url, progress=False).read_bytes() == newer
    assert server.gets("/files/v.pth")[1]["if_range"] is not None

    planted = hub.cache_path(server.serve("/files/w.pth", blob))
    planted.parent.mkdir(parents=True)
    planted.with_name("w.pth.part").write_bytes(newer[:1000])  # nothing says which file these bytes came from
    assert hub.download(server.url("/files/w.pth"), progress=False).read_bytes() == blob
    assert server.gets("/files/w.pth")[0]["range"] is None

    server.no_validators.add("/files/x.pth")  # a server without ETag/Last-Modified: parts cannot be resumed safely
    server.serve("/files/x.pth", blob)
    server.truncate_next = 1
    with pytest.raises(hub.DownloadError):
        hub.download(server.url("/files/x.pth"), progress=False, retries=0)
    server.files["/files/x.pth"] = newer
    assert hub.download(server.url("/files/x.pth"), progress=False).read_bytes() == newer
    assert server.gets("/files/x.pth")[1]["range"] is None


def test_html_pages_and_short_bodies_are_never_cached(server: _Server, blob: bytes) -> None:
    page = b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>"
    url = server.serve("/files/page.pth", page)
    server.content_types["/files/page.pth"] = "text/html; charset=utf-8"
    with pytest.raises(hub.DownloadError, match=r"page\.pth: the server answered with an HTML page"):
        hub.download(url, progress=False, retries=0)
    sniffed = server.serve("/files/sniff.pth", b"\n  <html><head></head></html>")
    with pytest.raises(hub.DownloadError, match="HTML page"):
        hub.download(sniffed, progress=False, retries=0)
    short = server.serve("/files/short.pth", blob)
    server.always_short.add("/files/short.pth")
    with pytest.raises(hub.DownloadError, match="connection closed at byte"):
        hub.download(short, progress=False, retries=1, backoff=0)
    for bad in (url, sniffed, short):
        assert not hub.cache_path(bad).exists()
    server.files["/files/page.pth"] = blob  # the real file later: fetched, not served from a poisoned cache
    server.content_types.pop("/files/page.pth")
    assert hub.download(url, progress=False).read_bytes() == blob


@pytest.mark.parametrize("suffix", [".part", ".lock", ".part.json", ""])
def test_symlinks_in_the_cache_are_never_followed(server: _Server, blob: bytes, tmp_path: Path, suffix: str) -> None:
    url = server.serve("/files/s.pth", blob)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    link = hub.cache_path(url).with_name("s.pth" + suffix)
    link.parent.mkdir(parents=True)
    link.symlink_to(victim)
    with pytest.raises(hub.DownloadError, match=re.escape(f"{link} is a symlink")):
        hub.download(url, progress=False, retries=0)
    assert victim.read_bytes() == b"precious"


def test_lock_file_symlink_is_refused_by_file_lock(tmp_path: Path) -> None:
    from mmpretrain._io import file_lock

    victim = tmp_path / "victim"
    victim.write_text("x")
    (tmp_path / "a.lock").symlink_to(victim)
    with pytest.raises(OSError, match=r"a\.lock"), file_lock(tmp_path / "a.lock"):
        pass
    assert victim.read_text() == "x"


def test_cache_hit_verify_modes_and_cli_rehash(
    server: _Server, blob: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = _blob_registry(tmp_path, server.serve("/files/blob.pth", blob), _sha(blob))
    path = hub.download("blob", registry=registry, progress=False)
    stat = path.stat()

    def corrupt(keep_mtime: bool) -> None:
        data = bytearray(path.read_bytes())
        data[100] ^= 0xFF
        path.write_bytes(bytes(data))
        if keep_mtime:
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    corrupt(keep_mtime=False)  # size and mtime no longer match the sidecar: re-hashed, found bad, fetched again
    assert hub.download("blob", registry=registry, progress=False).read_bytes() == blob
    assert len(server.gets("/files/blob.pth")) == 2
    stat = path.stat()
    corrupt(keep_mtime=True)  # same size and mtime: only a full verify sees it
    assert hub.download("blob", registry=registry, progress=False) == path
    assert len(server.gets("/files/blob.pth")) == 2
    assert hub_main(["--registry", str(registry), "verify", "blob"]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert hub.download("blob", registry=registry, progress=False, verify="full").read_bytes() == blob
    assert len(server.gets("/files/blob.pth")) == 3
    assert hub_main(["--registry", str(registry), "verify", "blob"]) == 0
    assert capsys.readouterr().out.split()[0] == _sha(blob)

    url = server.serve("/files/unpinned.pth", blob)  # no pinned hash: the recorded one is the expectation
    unpinned = hub.download(url, progress=False)
    unpinned.write_bytes(blob[::-1])
    assert hub.download(url, progress=False).read_bytes() == blob


def test_overall_deadline_stops_a_dripping_server(server: _Server, blob: bytes) -> None:
    url = server.serve("/files/drip.pth", blob[:2000])
    server.drip["/files/drip.pth"] = 0.01
    start = time.monotonic()
    with pytest.raises(hub.DownloadError, match=r"deadline .*1 s"):
        hub.download(url, progress=False, retries=3, backoff=0, deadline_s=1.0)
    assert time.monotonic() - start < 5
    assert not hub.cache_path(url).exists()


def test_dropped_connection_is_resumed(server: _Server, blob: bytes) -> None:
    url = server.serve("/files/cut.pth", blob)
    server.truncate_next = 1
    path = hub.download(url, sha256=_sha(blob), progress=False, backoff=0)
    assert path.read_bytes() == blob
    assert [r["range"] for r in server.gets("/files/cut.pth")] == [None, f"bytes={len(blob) // 2}-"]


def test_retries_after_503_then_gives_up(server: _Server, blob: bytes) -> None:
    url = server.serve("/files/flaky.pth", blob)
    server.fail_next = 2
    assert hub.download(url, progress=False, retries=3, backoff=0).read_bytes() == blob
    assert len(server.gets("/files/flaky.pth")) == 3

    server.fail_next = 10
    with pytest.raises(hub.DownloadError, match=r"after 2 attempts.*503"):
        hub.download(server.serve("/files/down.pth", blob), progress=False, retries=1, backoff=0)
    server.fail_next = 0
    with pytest.raises(hub.DownloadError, match="HTTP 404"):
        hub.download(server.url("/files/missing.pth"), progress=False, retries=3, backoff=0)
    assert len(server.gets("/files/missing.pth")) == 1


@pytest.mark.parametrize("flag", ["MMPRETRAIN_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_mode_fails_fast(
    server: _Server, blob: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    registry = _blob_registry(tmp_path, server.serve("/files/blob.pth", blob), _sha(blob))
    monkeypatch.setenv(flag, "1")
    with pytest.raises(hub.OfflineError) as info:
        hub.download("blob", registry=registry, progress=False)
    expected_path = hub.hub_cache_dir() / "names" / "blob" / "blob.pth"
    assert "'blob'" in str(info.value) and str(expected_path) in str(info.value)
    assert server.requests == []


def test_names_and_urls_never_escape_the_cache(server: _Server, blob: bytes, tmp_path: Path) -> None:
    server.serve("/evil.pth", blob)
    for name in ("../evil", "/etc/evil", "a/b", "a\\b", "..", ".hidden"):
        bad = _write_registry(
            tmp_path / "bad.json", {name: {"url": server.url("/x.pth"), "format": "timm", "architecture": SWIN}}
        )
        with pytest.raises(ValueError, match="not a safe file name"):
            hub.load_registry(bad)
    base = server.url("")
    for url in (
        f"{base}/a/..%2F..%2F..%2Fevil.pth",
        f"{base}/a/%2E%2E",
        f"{base}/a/..",
        f"{base}/dir/",
        f"{base}/%2Fetc%2Fevil",
    ):
        with pytest.raises(ValueError, match="not a safe file name"):
            hub.download(url, progress=False)
    traversal = _write_registry(
        tmp_path / "traversal.json",
        {"ok_name": {"url": f"{base}/x/..%2F..%2Fevil.pth", "format": "timm", "architecture": SWIN}},
    )
    with pytest.raises(ValueError, match="not a safe file name"):
        hub.download("ok_name", registry=traversal, progress=False)
    assert server.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "traversal.json"]


def test_concurrent_downloads_fetch_once(server: _Server, blob: bytes) -> None:
    url = server.serve("/files/shared.pth", blob)
    server.delay = 0.05
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(hub.download(url, progress=False))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1 and results[0].read_bytes() == blob
    assert len(server.gets("/files/shared.pth")) == 1


_DDP_WORKER = """
import os, sys, torch.distributed as dist
from mmpretrain import hub
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
path = hub.download(sys.argv[3], progress=False)
dist.barrier()
print("PATH", path)
dist.destroy_process_group()
"""


def test_ddp_ranks_download_once_per_machine(server: _Server, blob: bytes, tmp_path: Path) -> None:
    url = server.serve("/files/ddp.pth", blob)
    server.delay = 0.02
    env = dict(os.environ, LOCAL_RANK="", PYTHONPATH=str(Path(hub.__file__).parents[2]))
    procs = []
    for rank in range(2):
        env["LOCAL_RANK"] = str(rank)
        args = [sys.executable, "-c", _DDP_WORKER, str(rank), str(tmp_path / "dist_init"), url]
        procs.append(subprocess.Popen(args, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    paths = {line for out, _ in outputs for line in out.splitlines() if line.startswith("PATH")}
    assert len(paths) == 1
    assert len(server.gets("/files/ddp.pth")) == 1


# ----------------------------------------------------------------------------------------------- CLI


def test_cli(server: _Server, blob: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hub_main(["list"]) == 0
    assert "moby_swin_t_300ep\tmoby-official" in capsys.readouterr().out

    url = server.serve("/cli/blob.pth", blob)
    assert hub_main(["download", url, "--cache-dir", str(tmp_path / "c"), "--sha256", _sha(blob), "--no-progress"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.read_bytes() == blob and path.is_relative_to(tmp_path / "c")

    assert hub_main(["verify", str(path), "--sha256", _sha(blob)]) == 0
    assert capsys.readouterr().out.startswith(_sha(blob))
    assert hub_main(["verify", str(path), "--sha256", "1" * 64]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err

    source = _tiny_swin(seed=2)
    official = tmp_path / "official.pth"
    _official_moby_checkpoint(source, official, tmp_path / "pwned")
    args = ["convert", str(official), str(tmp_path / "conv"), "--arch", SWIN, "--arch-kwargs", json.dumps(TINY)]
    assert hub_main(args) == 0
    pasted = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert pasted["official"]["format"] == "mmpretrain"
    _same_outputs(hub.build_backbone(hub.load_checkpoint(tmp_path / "conv")), source)
    assert hub_main(["convert", str(_resnet_file(tmp_path / "resnet.pth")), str(tmp_path / "conv2")]) == 1
    assert "neither a Swin nor a ViT" in capsys.readouterr().err

    ckpt = tmp_path / "train.ckpt"
    _training_checkpoint(source, ckpt)
    assert hub_main(["publish", str(ckpt), str(tmp_path / "pub"), "--name", "cli_model"]) == 0
    pasted = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert pasted["cli_model"]["sha256"] == sha256_file(tmp_path / "pub" / "model.safetensors")
    assert hub_main(["publish", str(ckpt), str(tmp_path / "pub2"), "--name", "../escape"]) == 1
    assert "not a safe file name" in capsys.readouterr().err
