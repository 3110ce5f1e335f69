"""Data-set generation: schema, determinism, atomicity, resume, sharding, refusals."""

import json
import shutil

import numpy as np
import pytest
import xarray as xr
import zarr

from sns.data import schema
from sns.data.generate import generate_dataset, merge_shards
from sns.data.io import DatasetError, check_store, open_dataset, summary

SMALL = {"n_frames": 30, "spinup_steps": 50, "trajectories": {"train": 5, "valid": 2, "test": 1}}


def make(tmp_path, name="d", **kw):
    kw.setdefault("overrides", SMALL)
    kw.setdefault("progress", None)
    return generate_dataset("lorenz63", "cpu", out=tmp_path / name, **kw)


def read(path, split="train"):
    return open_dataset(path, split)["state"].values


def test_schema_and_attrs(tmp_path):
    out = make(tmp_path)
    ds = open_dataset(out, "train")
    var = ds["state"]
    assert var.dims == schema.variable_dims("lorenz63") == ("trajectory", "time", "dim")
    assert var.shape == (5, 30, 3) and var.dtype == np.float32
    assert ds["time"].attrs["units"] == "MTU"
    np.testing.assert_allclose(ds["time"].values, 0.5 + 0.05 * np.arange(30))
    a = ds.attrs
    for key in schema.REQUIRED_ATTRS:
        assert key in a, key
    assert a["params"]["sigma"] == 10.0 and a["param_units"]["dt"] == "MTU"
    assert json.dumps(a)  # plain containers
    # normalisation: measured train statistics, and the vector system is centred
    x = var.values.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(a["data_mean"], x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(a["data_std"], x.std(0), rtol=1e-5)
    assert a["norm_offset"] == a["data_mean"] and a["norm_scale"] == a["data_std"]
    # valid/test carry the train statistics
    assert open_dataset(out, "test").attrs["norm_scale"] == a["norm_scale"]
    assert "lorenz63" in summary(out)
    # the frames follow the solver exactly
    import torch

    from sns.data.generate import trajectory_seed
    from sns.systems.lorenz import Lorenz63
    sys = Lorenz63(dtype=torch.float32)  # generate_dataset's default solver precision
    u = sys.initial_condition(1, torch.Generator().manual_seed(trajectory_seed(0, "train", 3)))
    u = sys.step(u, 50 + 5 * 7)
    np.testing.assert_allclose(var.values[3, 7], u[0].float().numpy(), rtol=1e-6)


def test_per_trajectory_determinism(tmp_path):
    a = make(tmp_path, "a", batch_size=1)
    b = make(tmp_path, "b", batch_size=4)
    np.testing.assert_array_equal(read(a), read(b))
    c = make(tmp_path, "c", seed=1)
    assert not np.allclose(read(a), read(c))


def test_interrupted_generation_resumes_identically(tmp_path):
    ref = make(tmp_path, "ref", batch_size=2)
    calls = []

    def die_after_first_batch(msg):
        calls.append(msg)
        if "2/5 trajectories" in msg:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, "run", batch_size=2, progress=die_after_first_batch)
    out = tmp_path / "run"
    assert not (out / "train.zarr").exists()  # atomic: nothing final yet
    partial = zarr.open_group(str(out / "train.zarr.partial"), mode="r")
    assert partial.attrs["sns_completed_trajectories"] == 2
    with pytest.raises(DatasetError, match="resume"):
        check_store(out / "train.zarr")
    make(tmp_path, "run", batch_size=2)
    assert not (out / "train.zarr.partial").exists()
    for split in schema.SPLITS:
        np.testing.assert_array_equal(read(ref, split), read(out, split))


def test_refuses_existing_and_overwrites(tmp_path):
    out = make(tmp_path)
    before = read(out)
    with pytest.raises(FileExistsError, match="overwrite"):
        make(tmp_path, seed=5)
    np.testing.assert_array_equal(read(out), before)  # untouched
    make(tmp_path, seed=5, overwrite=True)
    assert not np.allclose(read(out), before)


def test_sharded_generation_equals_single_job(tmp_path):
    ref = make(tmp_path, "ref")
    out = tmp_path / "sharded"
    for k in range(3):
        make(tmp_path, "sharded", shard=(k, 3))
    assert not (out / "shards").exists()
    for split in schema.SPLITS:
        np.testing.assert_array_equal(read(ref, split), read(out, split))
    assert open_dataset(out).attrs["norm_scale"] == open_dataset(ref).attrs["norm_scale"]
    merge_shards(out, 3, progress=None)  # idempotent once merged


def test_bad_input_writes_nothing(tmp_path):
    bad = [
        (dict(system="navier"), "valid choices"),
        (dict(preset="huge"), "valid choices"),
        (dict(dtype="float16"), "valid choices"),
        (dict(params={"dt": -1.0}), "dt must be positive"),
        (dict(overrides={"n_frames": 0}), "n_frames"),
        (dict(overrides={"frames": 3}), "valid choices"),
        (dict(overrides={"trajectories": {"training": 3}}), "valid choices"),
        (dict(shard=(3, 3)), "shard index"),
    ]
    for kw, msg in bad:
        args = dict(system="lorenz63", preset="cpu", out=tmp_path / "x", progress=None)
        args.update(kw)
        with pytest.raises(ValueError, match=msg):
            generate_dataset(**args)
        assert not (tmp_path / "x").exists(), kw


def test_corrupt_and_foreign_stores(tmp_path):
    out = make(tmp_path)
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"a": ("t", np.arange(3.0))}).to_zarr(foreign)
    with pytest.raises(DatasetError, match="not an sns data set"):
        check_store(foreign)
    corrupt = tmp_path / "corrupt.zarr"
    shutil.copytree(out / "train.zarr", corrupt)
    (corrupt / "zarr.json").write_text("{ not json")
    with pytest.raises(DatasetError, match="not a readable zarr store"):
        check_store(corrupt)
    with pytest.raises(DatasetError, match="no data set store"):
        check_store(tmp_path / "missing.zarr")
    with pytest.raises(ValueError, match="valid choices"):
        open_dataset(out, "training")


def test_lorenz96_pooled_statistics(tmp_path):
    out = generate_dataset("lorenz96", "cpu", out=tmp_path / "l96", progress=None,
                           overrides={"n_frames": 20, "trajectories": {"train": 2, "valid": 1, "test": 1}})
    a = open_dataset(out).attrs
    assert len(a["norm_scale"]) == 1 and len(a["norm_offset"]) == 1


def test_cli_generate_and_refuse(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "sns.cli.generate", "system=lorenz63", f"out={out}",
           "overrides.n_frames=10", "overrides.trajectories.train=2", "overrides.trajectories.valid=1",
           "overrides.trajectories.test=1", f"hydra.run.dir={tmp_path}/hydra"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "train  state [1]  trajectory 2 x time 10 x dim 3" in r.stdout
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "already holds a data set" in r.stderr


def test_multistep_solver_frames_are_one_integration(tmp_path):
    """QG (AB3) carries its history across saves: frames equal one uninterrupted run."""
    import torch

    from sns.data.generate import trajectory_seed
    from sns.systems.qg import TwoLayerQG

    out = generate_dataset("qg", "cpu", out=tmp_path / "qg", progress=None, dtype="float64",
                           params={"nx": 16, "n_coarse": 8},
                           overrides={"n_frames": 4, "spinup_steps": 5, "save_every": 3,
                                      "trajectories": {"train": 1, "valid": 0, "test": 0}})
    ds = open_dataset(out)
    assert ds["pv"].dims == ("trajectory", "time", "layer", "y", "x") and ds["pv"].shape == (1, 4, 2, 8, 8)
    sys = TwoLayerQG(nx=16, n_coarse=8, dtype=torch.float64)
    u = sys.initial_condition(1, torch.Generator().manual_seed(trajectory_seed(0, "train", 0)))
    u, _ = sys.advance(u, 5 + 3 * 3)
    np.testing.assert_allclose(ds["pv"].values[0, 3], sys.observe(u)[0].numpy(), rtol=1e-5, atol=1e-12)
    assert ds.attrs["norm_scale"] == pytest.approx(ds.attrs["data_std"])  # cpu preset: measured scales
