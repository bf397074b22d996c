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


def test_the_user_guide_commands_run_in_order(tmp_path: Path) -> None:
    """Every `mmpretrain-export` line of docs/recsys.md, run in order on stores at the guide's paths (moved here)."""
    import re
    import shlex

    from mmpretrain.cli.export import export

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((200, 96)) * np.linspace(3, 0.1, 96)).astype(np.float32)
    ids = [f"item{i}" for i in range(200)]
    for name, rows, names in (("emb", x, ids), ("emb_other", x[:50], ids[:50]),
                              ("emb_new", x[150:] + 1, [f"new{i}" for i in range(25)] + ids[175:])):
        write_store(tmp_path / "data" / name, rows, {"id": names}, encoder="test", normalized=False)
    guide = (Path(__file__).parents[1] / "docs" / "recsys.md").read_text()
    lines = [line.split("  #")[0] for line in re.findall(r"^mmpretrain-export .*$", guide, flags=re.M)]
    assert len(lines) >= 5
    for line in lines:
        args = [a.replace("/data/", f"{tmp_path}/data/") for a in shlex.split(line)[1:]]
        summary = export(compose_cfg("export.yaml", [*args, "progress=false"], tmp_path))
        assert summary["items"] > 0, line
    assert read_features(tmp_path / "data" / "features")[1].shape == (225, 64)  # 200, then 25 new ids
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(tmp_path / "data" / "features" / "i2i.csv").to_pydict()
    _, per_item = np.unique(table["item_id"], return_counts=True)
    assert min(table["score"]) >= 0.3 and per_item.max() <= 20
    assert not (tmp_path / "data" / "features" / "i2i.parquet").exists()  # the csv table replaced it
