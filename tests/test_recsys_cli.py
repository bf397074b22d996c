"""`mmpretrain-export` as users run it: through Hydra's compose API and as the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import compose_cfg

from mmpretrain.embeddings import write_store
from mmpretrain.recsys import FeatureError, read_features

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((120, 24)) * np.linspace(3, 0.1, 24)).astype(np.float32)
    root = tmp_path_factory.mktemp("store") / "emb"
    write_store(root, x, {"id": [f"item{i}" for i in range(120)]}, encoder="test", normalized=False, shard_size=50)
    return root


def test_export_through_the_compose_api(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mmpretrain.cli.export import export

    overrides = [f"store={store}", f"output={tmp_path / 'features'}", "format=easyrec", "dim=8", "i2i_k=4",
                 "i2i_threshold=-1.0", "dtype=float16", "separator=|", "delimiter=\\t", "progress=false"]
    summary = export(compose_cfg("export.yaml", overrides, tmp_path))
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(json.dumps(summary))
    assert (summary["items"], summary["dim"], summary["dtype"]) == (120, 8, "float16")
    out = tmp_path / "features"
    assert {p.name for p in out.iterdir()} >= {"export.json", "features.config", "projection.npz",
                                               "projection.json", "i2i.parquet", "features-00000.csv"}
    assert "raw_input_dim: 8" in (out / "features.config").read_text()
    assert (out / "features-00000.csv").read_text().splitlines()[1].startswith("item0\t")
    assert pq.read_table(out / "i2i.parquet").num_rows == 120 * 4
    again = export(compose_cfg("export.yaml", [*overrides[:2], "incremental=true", "progress=false"], tmp_path))
    assert again["written"] == 0 and again["i2i"]["rows"] == 480
    with pytest.raises(FeatureError, match="this run asks for dim=16"):
        export(compose_cfg("export.yaml", [*overrides[:2], "incremental=true", "dim=16"], tmp_path))


def test_console_script_writes_features_and_neighbours(store: Path, tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    env.pop("MMPRETRAIN_ROOT", None)
    run = subprocess.run(
        [str(BIN / "mmpretrain-export"), f"store={store}", f"output={tmp_path / 'features'}", "format=parquet",
         "dim=6", "whiten=true", "i2i_k=3", "extras.print_config=false"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["projection"]["kind"] == "pca_whiten" and summary["i2i"]["rows"] == 360
    ids, values = read_features(tmp_path / "features")
    assert len(ids) == 120 and values.shape == (120, 6)
    np.testing.assert_allclose(np.linalg.norm(values, axis=1), 1.0, rtol=1e-5)
