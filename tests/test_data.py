"""Image sources, robust loading, the failure-rate abort, transforms and the demo generator."""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

from mmpretrain.data import (
    DataHealthMonitor,
    ImageDataset,
    SSLImageDataModule,
    labeled_folder,
    make_demo_images,
    moby_transform,
    read_file_list,
    scan_images,
)
from mmpretrain.data.transforms import GaussianBlur


def _png(path: Path, colour=(200, 10, 10), size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def _corrupt_folder(root: Path) -> Path:
    for i in range(6):
        _png(root / "sub" / f"good{i}.png", colour=(i * 40, 0, 0))
    data = (root / "sub/good0.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("this is not an image")
    (root / "notes.txt").write_text("skipped by extension")
    return root


def test_scan_is_recursive_sorted_and_counts_non_images(tmp_path: Path) -> None:
    source = scan_images(_corrupt_folder(tmp_path))
    names = [Path(p).name for p in source.paths]
    assert names == ["empty.jpg", *[f"good{i}.png" for i in range(6)], "text.png", "truncated.png"]
    assert source.skipped == 1


def test_corrupt_images_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = scan_images(_corrupt_folder(tmp_path))
    dataset = ImageDataset(source.paths, lambda im: torch.tensor(im.getpixel((0, 0))))
    caplog.set_level(logging.WARNING)
    failed = 0
    for i in range(len(dataset)):
        sample = dataset[i]
        failed += sample["failed"]
        assert "good" in Path(dataset.paths[sample["index"]]).name
    assert failed >= 3  # the three bad files, each at least once
    assert {"empty.jpg", "text.png", "truncated.png"} <= {
        Path(r.getMessage().split()[3].rstrip(":")).name for r in caplog.records if "unreadable" in r.getMessage()
    }
    assert dataset[0]["index"] == dataset[0]["index"]  # re-draws are seeded by the index


def test_all_corrupt_raises_after_bounded_redraws(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"junk")
    dataset = ImageDataset([str(tmp_path / "a.png")], lambda im: im, max_redraws=3)
    with pytest.raises(RuntimeError, match=r"4 unreadable images in a row.*a.png"):
        dataset[0]


class _FakeModule:
    def log(self, *args, **kwargs) -> None:
        pass


def test_health_monitor_aborts_past_failure_rate() -> None:
    monitor = DataHealthMonitor(max_failure_rate=0.2, min_attempts=10)
    batch = {"failed": torch.tensor([0, 1, 0, 0])}
    monitor.on_train_batch_end(None, _FakeModule(), None, batch, 0)  # 1 of 5: 20%, under min_attempts
    monitor.on_train_batch_end(None, _FakeModule(), None, {"failed": torch.tensor([0, 0, 0, 0])}, 1)
    assert (monitor.failed, monitor.attempted) == (1, 9)
    with pytest.raises(RuntimeError, match=r"3 of 14 reads failed.*max_failure_rate=20.0%"):
        monitor.on_train_batch_end(None, _FakeModule(), None, {"failed": torch.tensor([2, 0, 0])}, 2)


def test_file_list_relative_paths_labels_and_errors(tmp_path: Path) -> None:
    _png(tmp_path / "imgs/a.png")
    _png(tmp_path / "imgs/b.png")
    (tmp_path / "list.txt").write_text("# comment\nimgs/a.png\tcat\n\nimgs/b.png\tdog\nimgs/readme.md\tdog\n")
    source = read_file_list(tmp_path / "list.txt")
    assert source.paths == [str(tmp_path / "imgs/a.png"), str(tmp_path / "imgs/b.png")]
    assert source.labels == [0, 1] and source.classes == ["cat", "dog"] and source.skipped == 1
    (tmp_path / "bad.txt").write_text("imgs/a.png\tcat\textra\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: expected 'path' or 'path<TAB>label'"):
        read_file_list(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match=r"data.file_list=.*missing.txt"):
        read_file_list(tmp_path / "missing.txt")


def test_labeled_folder_and_class_mismatch(tmp_path: Path) -> None:
    for cls in ("b", "a"):
        _png(tmp_path / "train" / cls / "x.png")
    _png(tmp_path / "val" / "a" / "x.png")
    source = labeled_folder(tmp_path / "train")
    assert source.classes == ["a", "b"] and source.labels == [0, 1]
    dm = SSLImageDataModule(
        root=str(tmp_path / "train"), knn_train_root=str(tmp_path / "train"), knn_val_root=str(tmp_path / "val")
    )
    with pytest.raises(ValueError, match="different classes"):
        dm.setup()
    with pytest.raises(ValueError, match=r"set both data\.knn_train_root and data\.knn_val_root"):
        SSLImageDataModule(root=str(tmp_path), knn_train_root=str(tmp_path / "train"))


def test_moby_views_follow_byol_recipe() -> None:
    pair = moby_transform(32)
    v1, v2 = pair.view_1.transforms, pair.view_2.transforms
    names1, names2 = [type(t).__name__ for t in v1], [type(t).__name__ for t in v2]
    assert "RandomSolarize" not in names1 and v2[names2.index("RandomSolarize")].p == pytest.approx(0.2)
    blur1, blur2 = v1[4], v2[4]
    assert blur1.p == 1.0 and blur2.p == pytest.approx(0.1)
    assert isinstance(blur1.transforms[0], GaussianBlur) and blur1.transforms[0].sigma == (0.1, 2.0)
    jitter = v1[2]
    assert jitter.p == pytest.approx(0.8)
    cj = jitter.transforms[0]
    assert (cj.brightness, cj.contrast, cj.saturation, cj.hue) == ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))
    assert v1[3].p == pytest.approx(0.2) and v1[0].scale == (0.08, 1.0)
    assert v1[0].interpolation == InterpolationMode.BILINEAR  # the official RandomResizedCrop's default
    a, b = pair(Image.new("RGB", (40, 40), (10, 200, 30)))
    assert a.shape == b.shape == (3, 32, 32)


def test_blur_is_pil_gaussian_blur_at_any_image_size() -> None:
    """The official blur (PIL, radius = sigma) is not truncated by a kernel tied to the image side."""
    from PIL import ImageFilter

    image = Image.new("L", (64, 64), 255)
    image.putpixel((32, 32), 0)
    image = image.convert("RGB")
    random.seed(3)
    ours = np.asarray(GaussianBlur((2.0, 2.0))(image))
    official = np.asarray(image.filter(ImageFilter.GaussianBlur(radius=2.0)))
    assert np.array_equal(ours, official)
    assert (ours[32, 24:41, 0] < 255).sum() > 7  # reaches beyond the ±3 px a 7-px kernel would allow


def test_demo_images_are_deterministic(tmp_path: Path) -> None:
    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for f in sorted(root.rglob("*.png")):
            h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
        return h.hexdigest()

    a = make_demo_images(tmp_path / "a", num_classes=3, train_per_class=2, val_per_class=1, size=24)
    b = make_demo_images(tmp_path / "b", num_classes=3, train_per_class=2, val_per_class=1, size=24)
    c = make_demo_images(tmp_path / "c", num_classes=3, train_per_class=2, val_per_class=1, size=24, seed=1)
    assert digest(a) == digest(b) != digest(c)
    assert sorted(p.name for p in (a / "train").iterdir()) == ["circle", "square", "triangle"]
    assert len(list((a / "val").rglob("*.png"))) == 3
    with pytest.raises(ValueError, match="num_classes"):
        make_demo_images(tmp_path / "d", num_classes=1)
