"""A bad setting fails when the module is built, with the config key and the allowed values in the message."""

from __future__ import annotations

import math

import pytest

from mmpretrain.errors import ConfigError
from mmpretrain.training import check_choice, check_range


def test_check_range_bounds_and_nan() -> None:
    """A setting out of range is the user's config: the project's ConfigError (still a ValueError)."""
    check_range({"a": 0.0, "b": 0.999, "c": None}, 0.0, 1.0, high_open=True)
    with pytest.raises(ValueError, match=r"^a=1.0 must be in \[0.0, 1.0\)$"):
        check_range({"a": 1.0}, 0.0, 1.0, high_open=True)
    with pytest.raises(ValueError, match=r"^t=0.0 must be in \(0.0, inf\]$"):
        check_range({"t": 0.0}, 0.0, low_open=True)
    with pytest.raises(ValueError, match=r"^n=nan must be in"):
        check_range({"n": math.nan}, 0.0)
    assert check_choice("hard", ("hard", "random"), "k") == "hard"
    with pytest.raises(ValueError, match=r"^k='soft' is not one of \('hard', 'random'\)$"):
        check_choice("soft", ("hard", "random"), "k")
    for call in (lambda: check_range({"a": 2}, 0, 1), lambda: check_choice("x", ("y",), "k")):
        with pytest.raises(ConfigError):
            call()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"mvm_ratio": 1.0}, r"model.mvm_ratio=1.0 must be in \[0.0, 1.0\)"),
        ({"mvm_ratio": -0.1}, r"model.mvm_ratio=-0.1 must be in"),
        ({"mtm_prob": 1.5}, r"model.mtm_prob=1.5 must be in \[0.0, 1.0\]"),
        ({"modality_dropout": {"text": 2.0}}, r"model.modality_dropout.text=2.0"),
        ({"vtm_negatives": "soft"}, r"model.vtm_negatives='soft' is not one of"),
        ({"mvm_masking": "tube"}, r"model.mvm_masking='tube' is not one of"),
        ({"arch": {"text_pooling": "max"}}, r"model.arch.text_pooling='max' is not one of"),
        ({"num_frames": 0}, r"model.num_frames=0 must be in \[1, inf\]"),
        ({"arch": {"width": 30, "num_heads": 4}}, r"model.arch.width=30 must be divisible by model.arch.num_heads=4"),
        ({"arch": {"temperature": 0.0}}, r"model.arch.temperature=0.0 must be in \(0.0, inf\]"),
        ({"loss_weights": {"vtc": -1.0}}, r"model.loss_weights.vtc=-1.0 must be in \[0.0, inf\]"),
    ],
)
def test_video_pretraining_refuses_bad_settings_at_construction(override: dict, message: str) -> None:
    from mmpretrain.video import VideoFusionPretrain

    with pytest.raises(ValueError, match=message):
        VideoFusionPretrain(**override)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"drop_path_rate": 1.0}, r"model.drop_path_rate=1.0 must be in \[0.0, 1.0\)"),
        ({"momentum_start": 1.2}, r"model.momentum_start=1.2 must be in \[0.0, 1.0\]"),
        ({"queue_len": 0}, r"model.queue_len=0 must be in \[1, inf\]"),
        ({"temperature": 0}, r"model.temperature=0 must be in \(0.0, inf\]"),
        ({"interpolation": "cubic"}, r"model.interpolation='cubic' is not one of"),
    ],
)
def test_moby_refuses_bad_settings_at_construction(override: dict, message: str) -> None:
    from mmpretrain.ssl import MoBY

    with pytest.raises(ValueError, match=message):
        MoBY(**override)
