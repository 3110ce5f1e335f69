"""Bring your own data (issue 17): sns-import turns foreign trajectories (a netCDF field store with
jax-cfd's dims, a CSV of a vector system sns has no solver for) into a data set of the system
``generic`` that sns-train, sns-rollout and sns-evaluate use end to end; bad input is a clear
error that names the value and leaves nothing behind."""

import math
import re
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from sns.data import schema
from sns.data.importer import import_dataset, split_assignment
from sns.data.io import DatasetError, check_store, open_dataset
from sns.rollout import open_rollout

S, T, NX, NY = 5, 16, 16, 8  # samples, frames, x and y sizes (NX != NY: a missed transpose changes the shape)
X = 2 * np.pi * np.arange(NX) / NX
Y = 2 * np.pi * np.arange(NY) / NY
TIME = 0.5 + 0.1 * np.arange(T)


def field_values(seed=0):
    """``w[sample, time, x, y]``: travelling waves plus noise (float32)."""
    rng = np.random.default_rng(seed)
    s, t, x, y = np.meshgrid(np.arange(S), np.arange(T), X, Y, indexing="ij")
    w = np.sin(x + 0.3 * t + s) * np.cos(2 * y) + 0.1 * rng.standard_normal(s.shape) + 0.2
    return w.astype(np.float32)


def jaxcfd_like(w=None, **extra_vars):
    """A data set laid out as jax-cfd's Kolmogorov data: dims (sample, time, x, y)."""
    w = field_values() if w is None else w
    data = {"vorticity": (("sample", "time", "x", "y"), w, {"units": "1/s", "long_name": "vorticity"}),
            **extra_vars}
    return xr.Dataset(data, coords={"time": ("time", TIME, {"units": "s"}), "x": ("x", X, {"units": "m"}),
                                    "y": ("y", Y, {"units": "m"})})


@pytest.fixture(scope="module")
def netcdf(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "kolmogorov.nc"
    jaxcfd_like().to_netcdf(path, engine="scipy")  # netCDF-3: scipy reads and writes it
    return path


def oscillator(n_traj=6, n_frames=60, dt=0.1, seed=0):
    """A damped oscillator x'' + 2 zeta omega x' + omega^2 x = 0 (RK4, 10 substeps per frame) as a
    long-format table with a string trajectory id, rows shuffled: columns run, t, x, v."""
    rng = np.random.default_rng(seed)
    omega, zeta, h = 2.0, 0.05, dt / 10

    def f(u):
        return np.stack([u[..., 1], -2 * zeta * omega * u[..., 1] - omega**2 * u[..., 0]], -1)

    u = rng.uniform(-1, 1, (n_traj, 2))
    frames = [u]
    for _ in range(n_frames - 1):
        for _ in range(10):
            k1 = f(u)
            k2 = f(u + h / 2 * k1)
            k3 = f(u + h / 2 * k2)
            k4 = f(u + h * k3)
            u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        frames.append(u)
    traj = np.stack(frames, 1)  # (n_traj, n_frames, 2)
    rows = pd.DataFrame({
        "run": np.repeat([f"run{k:02d}" for k in range(n_traj)], n_frames),
        "t": np.tile(dt * np.arange(n_frames), n_traj),
        "x": traj[..., 0].reshape(-1), "v": traj[..., 1].reshape(-1)})
    return traj, rows.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def compose(config, overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sns.cli import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return hydra_compose(config_name=config, overrides=overrides)


def run_cli(monkeypatch, module, *args):
    """``sns-<cmd> args`` in this process (the Hydra entry point reads sys.argv)."""
    import importlib

    monkeypatch.setattr(sys, "argv", [module, *args])
    importlib.import_module(module).main()


def train(overrides, run):
    from sns.cli.train import train as train_fn

    n = torch.get_num_threads()
    try:
        return train_fn(compose("train", [*overrides, f"paths.run_dir={run}", f"paths.output_dir={run}",
                                          "torch_threads=1", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                                          "+trainer.enable_model_summary=false"]))
    finally:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------- (a) a field store


def test_netcdf_field_store_end_to_end(netcdf, tmp_path, monkeypatch):
    from sns.evaluation import evaluate
    from sns.cli.rollout import run_rollout

    w = field_values()
    out = import_dataset(netcdf, tmp_path / "ks", dims={"trajectory": "sample"},
                         splits={"train": 3, "valid": 1, "test": 1}, progress=None)
    ds = open_dataset(out, "train")
    var = ds["vorticity"]
    assert var.dims == ("trajectory", "time", "y", "x") and var.shape == (3, T, NY, NX)
    assert var.dtype == np.float32 and var.attrs["units"] == "1/s"
    # transposed (x, y) -> (y, x): the value at a known position is the source's
    i, j = 5, 3
    np.testing.assert_array_equal(var.sel(x=X[i], y=Y[j]).values, w[:3, :, i, j])
    np.testing.assert_array_equal(var.values, w[:3].transpose(0, 1, 3, 2))
    np.testing.assert_allclose(ds["time"].values, TIME)
    assert ds["time"].attrs["units"] == "s" and ds["x"].attrs["units"] == "m"
    np.testing.assert_allclose(ds["x"].values, X)
    a = ds.attrs
    assert a["system"] == schema.GENERIC and a["dt"] == pytest.approx(0.1) and a["save_every"] == 1
    assert a["layout"]["dims"] == ["y", "x"] and a["source_dims"]["trajectory"] == "sample"
    # splits by trajectory, in source order
    assert a["source_trajectories"] == [0, 1, 2]
    for split, k in (("valid", 3), ("test", 4)):
        other = open_dataset(out, split)
        assert other.attrs["source_trajectories"] == [k]
        np.testing.assert_array_equal(other["vorticity"].values[0], w[k].transpose(0, 2, 1))
        assert other.attrs["norm_scale"] == a["norm_scale"]  # the train split's normalisation everywhere
    # normalisation: the train split's statistics (centred: the field has a non-zero mean)
    train64 = w[:3].astype(np.float64)
    assert a["data_mean"] == pytest.approx([train64.mean()], rel=1e-6)
    assert a["data_std"] == pytest.approx([train64.std()], rel=1e-6)
    assert a["norm_offset"] == a["data_mean"] and a["norm_scale"] == a["data_std"]
    # consolidated metadata: a plain xr.open_zarr neither warns nor misses anything
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = xr.open_zarr(out / "train.zarr")
    np.testing.assert_array_equal(plain["vorticity"].values, var.values)

    # the CLI gives the same data set
    run_cli(monkeypatch, "sns.cli.importer", f"source={netcdf}", f"out={tmp_path}/ks-cli", "dims.trajectory=sample",
            "splits.train=3", "splits.valid=1", "splits.test=1", f"hydra.run.dir={tmp_path}/hydra")
    for split in schema.SPLITS:
        np.testing.assert_array_equal(open_dataset(tmp_path / "ks-cli", split)["vorticity"].values,
                                      open_dataset(out, split)["vorticity"].values)

    # sns-train (tiny U-Net, 3 steps), sns-rollout, sns-evaluate with system generic
    metrics = train(["experiment=generic_field", f"data.data_dir={out}", f"model.state_shape=[1,{NY},{NX}]",
                     "model.surrogate.module.net.preset=tiny", "data.batch_size=8", "data.max_val_windows=4",
                     "model.surrogate.val_horizon=3"], tmp_path / "sur")
    assert metrics["global_step"] == 3 and math.isfinite(metrics["val/loss"])
    from sns.export import load_model

    _, extra = load_model(tmp_path / "sur" / "surrogate.safetensors")
    assert extra["data"]["system"] == "generic" and extra["data"]["norm_offset"] == a["norm_offset"]
    result = run_rollout(compose("rollout", [f"surrogate={tmp_path}/sur/surrogate.safetensors", f"data_dir={out}",
                                             "n_steps=6", "trajectories=1", f"out={tmp_path}/roll.zarr", "chunk=4"]))
    assert result.status == "completed"
    roll = open_rollout(tmp_path / "roll.zarr")
    assert roll["state"].shape == (1, 7, 1, NY, NX) and roll.attrs["system"] == "generic"
    report = evaluate(out / "test.zarr", {"surrogate": tmp_path / "roll.zarr"}, tmp_path / "report", max_lag=3,
                      corr_steps=6)
    row = next(r for r in report["rows"] if r["method"] == "surrogate")
    assert row["status"] == "completed" and row["steps"] == 6
    assert math.isfinite(row["corr_err"]) and math.isfinite(row["enstrophy_ratio"])
    assert "spec_max_rel" not in row and "corr_r_err" not in row  # an 8 x 16 grid has no isotropic shells
    assert any("not square" in n for n in report["notes"])
    assert "Note: grid 8 x 16 (y x x) is not square" in (tmp_path / "report" / "metrics.md").read_text()


def test_coarsening_and_channels(tmp_path):
    """Square fields coarsened by spectral truncation (the library's helper) and by block means;
    two variables stacked as channels, each channel normalised on its own."""
    from sns.systems.spectral import resample_spectral

    rng = np.random.default_rng(1)
    n = 16
    u = rng.standard_normal((4, 3, n, n)).astype(np.float32)  # (sample, time, x, y)
    v = (5 + 2 * rng.standard_normal((4, 3, n, n))).astype(np.float32)
    grid = np.arange(n) * 0.5
    src = xr.Dataset({"u": (("sample", "time", "x", "y"), u), "v": (("sample", "time", "x", "y"), v)},
                     coords={"x": grid, "y": grid})
    kw = dict(variable=["u", "v"], dims={"trajectory": "sample"}, frame_interval=0.5, units="m/s",
              splits={"train": 2, "valid": 1, "test": 1}, progress=None)
    spec = import_dataset(src, tmp_path / "spec", coarsen=2, coarsen_method="spectral", **kw)
    ds = open_dataset(spec)
    assert ds["field"].dims == ("trajectory", "time", "channel", "y", "x") and ds["field"].shape == (2, 3, 2, 8, 8)
    want = resample_spectral(torch.from_numpy(u[:2].transpose(0, 1, 3, 2).astype(np.float64)), 8).numpy()
    np.testing.assert_allclose(ds["field"].values[:, :, 0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds["x"].values, grid[::2])  # every other source point
    assert ds["channel"].attrs["names"] == ["u", "v"]
    mean = import_dataset(src, tmp_path / "mean", coarsen=2, coarsen_method="mean", **kw)
    dm = open_dataset(mean)
    blocks = u[:2].transpose(0, 1, 3, 2).reshape(2, 3, 8, 2, 8, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(dm["field"].values[:, :, 0], blocks, rtol=1e-5)
    np.testing.assert_allclose(dm["x"].values, grid.reshape(8, 2).mean(1))  # block centres
    a = dm.attrs  # per channel: v has mean ~5
    stacked = np.stack([u[:2], v[:2]], 2).reshape(2, 3, 2, 8, 2, 8, 2).mean(axis=(4, 6)).astype(np.float32)
    assert a["data_mean"] == pytest.approx(stacked.astype(np.float64).mean(axis=(0, 1, 3, 4)), rel=1e-5)
    assert a["data_std"] == pytest.approx(stacked.astype(np.float64).std(axis=(0, 1, 3, 4)), rel=1e-5)
    assert a["norm_offset"] == a["data_mean"] and a["data_mean"][1] > 4
    zero = import_dataset(src, tmp_path / "zero", centre=False, **kw)
    assert open_dataset(zero).attrs["norm_offset"] == [0.0, 0.0]  # sns-generate's rule for fields
    # sns-evaluate on a square generic grid: spectra computed (a split standing in for a rollout), with a note
    from sns.evaluation import evaluate

    report = evaluate(spec / "test.zarr", {"train": spec / "train.zarr"}, tmp_path / "report", max_lag=1)
    row = next(r for r in report["rows"] if r["method"] == "train")
    assert math.isfinite(row["spec_max_rel"]) and math.isfinite(row["corr_r_err"])
    assert any("read each channel as a vorticity" in n for n in report["notes"])


# ----------------------------------------------------------------------------- (b) a CSV vector system


def test_csv_vector_system_end_to_end(tmp_path, monkeypatch):
    from sns.evaluation import evaluate
    from sns.cli.rollout import run_rollout

    traj, rows = oscillator()
    csv = tmp_path / "oscillator.csv"
    rows.to_csv(csv, index=False)
    run_cli(monkeypatch, "sns.cli.importer", f"source={csv}", f"out={tmp_path}/osc", "dims.trajectory=run",
            "dims.time=t", "units=1", "time_units=s", "splits.train=0.5", "splits.valid=0.25", "splits.test=0.25",
            f"hydra.run.dir={tmp_path}/hydra")
    out = tmp_path / "osc"
    ds = open_dataset(out, "train")
    assert ds["state"].dims == ("trajectory", "time", "dim") and ds["state"].shape == (3, 60, 2)
    assert ds["dim"].attrs["names"] == ["x", "v"] and ds.attrs["layout"]["units"] == "1"
    # rows were shuffled: the import sorts them by trajectory and time
    np.testing.assert_allclose(ds["state"].values, traj[:3], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ds["time"].values, 0.1 * np.arange(60), atol=1e-12)
    # 6 trajectories, fractions 0.5 / 0.25 / 0.25: 3 / 2 / 1 (largest remainder), by trajectory
    assert ds.attrs["source_trajectories"] == ["run00", "run01", "run02"]
    assert open_dataset(out, "valid").attrs["source_trajectories"] == ["run03", "run04"]
    test = open_dataset(out, "test")
    np.testing.assert_allclose(test["state"].values[0], traj[5], rtol=1e-6, atol=1e-7)
    a = ds.attrs
    flat = traj[:3].astype(np.float32).astype(np.float64).reshape(-1, 2)
    assert a["data_mean"] == pytest.approx(flat.mean(0), rel=1e-6, abs=1e-9)
    assert a["data_std"] == pytest.approx(flat.std(0), rel=1e-6)
    assert a["norm_offset"] == a["data_mean"] and a["norm_scale"] == a["data_std"]  # vectors: centred
    assert a["dt"] == pytest.approx(0.1) and a["layout"]["time_units"] == "s"

    common = ["experiment=generic_vector", f"data.data_dir={out}", "model.state_dim=2", "data.batch_size=16",
              "data.max_val_windows=8", "diffusion.n_levels=10"]
    train([*common, "model.surrogate.val_horizon=5"], tmp_path / "sur")
    train([*common, "task=denoiser"], tmp_path / "den")
    sur = f"surrogate={tmp_path}/sur/surrogate.safetensors"
    run_rollout(compose("rollout", [sur, f"data_dir={out}", "n_steps=20", "trajectories=1",
                                    f"out={tmp_path}/plain.zarr"]))
    run_rollout(compose("rollout", [sur, f"denoiser={tmp_path}/den/denoiser.safetensors", f"data_dir={out}",
                                    "n_steps=20", "trajectories=1", "refiner.fixed_levels=[0,0]",
                                    f"out={tmp_path}/sns.zarr"]))
    for name in ("plain", "sns"):
        r = open_rollout(tmp_path / f"{name}.zarr")
        assert r.attrs["rollout_status"] == "completed" and r["state"].shape == (1, 21, 2)
    report = evaluate(out / "test.zarr", {"surrogate": tmp_path / "plain.zarr", "sns": tmp_path / "sns.zarr"},
                      tmp_path / "report", max_lag=5)
    rows_ = {r["method"]: r for r in report["rows"]}
    for name in ("surrogate", "sns"):
        assert math.isfinite(rows_[name]["w1_mean"]) and math.isfinite(rows_[name]["acf_err"])
    assert (tmp_path / "report" / "marginals.png").exists()


# ----------------------------------------------------------------------------- things that need a solver


def test_generic_has_no_solver(tmp_path):
    from sns.data.generate import generate_dataset
    from sns.losses.divergence import DivergenceRegularizer
    from sns.systems import make_system

    with pytest.raises(ValueError, match="'generic' has no built-in solver"):
        generate_dataset("generic", "cpu", out=tmp_path / "g", progress=None)
    assert not (tmp_path / "g").exists()
    with pytest.raises(ValueError, match="'generic' has no built-in solver"):
        make_system("generic")
    with pytest.raises(ValueError, match="target 'system:generic' is not available.*target='data'"):
        DivergenceRegularizer(target="system:generic", dt=0.1)


def test_generic_models_name_their_missing_shape(tmp_path):
    from sns.cli.train import train as train_fn

    for experiment, key in (("generic_vector", "model.state_dim"), ("generic_field", "model.state_shape")):
        cfg = compose("train", [f"experiment={experiment}", f"paths.run_dir={tmp_path}", f"paths.output_dir={tmp_path}"])
        with pytest.raises(ValueError, match=re.escape(f"missing mandatory setting(s) {key}")):
            train_fn(cfg)
    assert not any(tmp_path.iterdir())


def test_generated_stores_open_without_warning(tmp_path):
    """sns-generate writes consolidated metadata too; sns's readers still see later changes."""
    import zarr

    from sns.data.generate import generate_dataset

    out = generate_dataset("lorenz63", "cpu", out=tmp_path / "l63", progress=None,
                           overrides={"n_frames": 10, "spinup_steps": 10,
                                      "trajectories": {"train": 2, "valid": 1, "test": 1}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xr.open_zarr(out / "train.zarr")["state"].shape == (2, 10, 3)
    arr = zarr.open_group(str(out / "train.zarr"), mode="r+", use_consolidated=False)["state"]
    arr.resize((1, 10, 3))
    assert open_dataset(out)["state"].shape == (1, 10, 3)


# ----------------------------------------------------------------------------- (c) bad input


def _listing(path):
    return sorted(p.name for p in path.iterdir())


def _csv(tmp_path, rows):
    path = tmp_path / "src.csv"
    rows.to_csv(path, index=False)
    return path


def _nan_field():
    w = field_values()
    w[4, 3, 2, 1] = np.nan  # the last sample: train and valid are written before it is met
    return w


def _time_reversed():
    return jaxcfd_like().assign_coords(time=("time", TIME[::-1]))


def _mixed_csv():
    _, rows = oscillator(n_traj=3, n_frames=10)
    rows["x"] = (rows["x"] * 100).round().astype(np.int64)
    return rows


def _nan_csv():
    _, rows = oscillator(n_traj=3, n_frames=10)
    rows.loc[rows.index[5], "v"] = np.nan
    return rows


FIELD = dict(dims={"trajectory": "sample"}, splits={"train": 3, "valid": 1, "test": 1})
BAD = {  # id -> (source maker, import kwargs, what the message must contain)
    "unmapped role": (lambda: jaxcfd_like(), dict(FIELD, dims={"trajectory": "sample", "x": "lon"}),
                      "dims.x='lon' is not a dim"),
    "extra source dim": (lambda: jaxcfd_like().expand_dims(level=2).transpose("sample", "time", "level", "x", "y"),
                         FIELD, "dims ['level']"),
    "unknown role": (lambda: jaxcfd_like(), dict(FIELD, dims={"trajectory": "sample", "depth": "x"}),
                     "unknown dims roles ['depth']"),
    "no trajectory dim": (lambda: jaxcfd_like(), dict(FIELD, dims={}), "dims ['sample']"),
    "missing variable": (lambda: jaxcfd_like(), dict(FIELD, variable="omega"), "variable 'omega' is not in"),
    "mixed dtypes (variables)": (
        lambda: jaxcfd_like(count=(("sample", "time", "x", "y"), np.ones((S, T, NX, NY), np.int32))),
        dict(FIELD, variable=["vorticity", "count"]), "mixed dtypes (vorticity: float32, count: int32)"),
    "mixed dtypes (columns)": (_mixed_csv, dict(dims={"trajectory": "run", "time": "t"}, units="1"),
                               "mixed dtypes (x: int64, v: float64)"),
    "NaN in a field": (lambda: jaxcfd_like(_nan_field()), FIELD,
                       "non-finite value (nan) at variable 'vorticity' at sample=4, time=3, y=1, x=2"),
    "NaN in a column": (_nan_csv, dict(dims={"trajectory": "run", "time": "t"}, units="1"),
                        "non-finite value (nan) at column 'v'"),
    "fewer trajectories than splits": (lambda: jaxcfd_like().isel(sample=slice(0, 2)), dict(FIELD, splits=None),
                                       "has 2 trajectories, fewer than the 3 splits"),
    "counts over the trajectories": (lambda: jaxcfd_like(), dict(FIELD, splits={"train": 4, "valid": 1, "test": 1}),
                                     "ask for 6 trajectories; the source has 5"),
    "mixed fractions and counts": (lambda: jaxcfd_like(), dict(FIELD, splits={"train": 0.8, "valid": 1}),
                                   "splits mix counts"),
    "empty units": (lambda: jaxcfd_like(), dict(FIELD, units=""), "units='' is not a units string"),
    "placeholder units": (lambda: jaxcfd_like(), dict(FIELD, units="unknown"), "units='unknown' is not"),
    "non-string units": (lambda: jaxcfd_like(), dict(FIELD, units=5), "units=5 is not a units string"),
    "units with a newline": (lambda: jaxcfd_like(), dict(FIELD, time_units="s\n"), "time_units='s\\n' is not"),
    "zero frame interval": (lambda: jaxcfd_like().drop_vars("time"), dict(FIELD, frame_interval=0),
                            "frame_interval must be a positive number (the time between frames), got 0"),
    "negative frame interval": (lambda: jaxcfd_like().drop_vars("time"), dict(FIELD, frame_interval=-0.1),
                                "got -0.1"),
    "decreasing time": (_time_reversed, FIELD, "'time' of the xarray.Dataset source is not strictly increasing"),
    "interval disagrees": (lambda: jaxcfd_like(), dict(FIELD, frame_interval=0.2),
                           "frame_interval=0.2 disagrees with the step"),
    "no time at all": (lambda: jaxcfd_like().drop_vars("time"), FIELD, "give frame_interval="),
    "coarsen factor": (lambda: jaxcfd_like(), dict(FIELD, coarsen=3), "coarsen=3 does not divide the grid 8 x 16"),
    "spectral on a rectangle": (lambda: jaxcfd_like(), dict(FIELD, coarsen=2),
                                "needs a square even grid with an even coarse size; got 8 x 16"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_the_value_and_writes_nothing(tmp_path, case):
    make, kwargs, message = BAD[case]
    source = make()
    if isinstance(source, pd.DataFrame):
        source = _csv(tmp_path, source)
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        import_dataset(source, tmp_path / "deep" / "out", progress=None, **kwargs)
    assert _listing(tmp_path) == before  # no output, no temporary directory, no parent made


def test_bad_netcdf_and_cli_errors(netcdf, tmp_path, monkeypatch, capsys):
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match=re.escape("variable 'omega' is not in")):
        import_dataset(netcdf, tmp_path / "out", variable="omega", dims={"trajectory": "sample"}, progress=None)
    with pytest.raises(FileNotFoundError, match="missing.nc does not exist"):
        import_dataset(tmp_path / "missing.nc", tmp_path / "out", progress=None)
    with pytest.raises(ValueError, match="cannot tell the format"):
        import_dataset(netcdf.parent, tmp_path / "out", progress=None)
    assert _listing(tmp_path) == before
    with pytest.raises(SystemExit) as exc:  # the CLI: a one-line error, exit code 2
        run_cli(monkeypatch, "sns.cli.importer", f"source={netcdf}", f"out={tmp_path}/out", "dims.trajectory=sample",
                "frame_interval=-1", f"hydra.run.dir={tmp_path}/hydra")
    assert exc.value.code == 2
    assert "sns-import: error: frame_interval must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_output(netcdf, tmp_path):
    kw = dict(dims={"trajectory": "sample"}, splits={"train": 3, "valid": 1, "test": 1}, progress=None)
    out = import_dataset(netcdf, tmp_path / "ks", **kw)
    with pytest.raises(FileExistsError, match="pass overwrite=true"):
        import_dataset(netcdf, out, **kw)
    # an overwrite that fails while writing (a NaN in the last trajectory) leaves the old data set
    with pytest.raises(ValueError, match="non-finite value"):
        import_dataset(jaxcfd_like(_nan_field()), out, overwrite=True, **kw)
    assert open_dataset(out).attrs["split_trajectories"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ks"]
    import_dataset(netcdf, out, overwrite=True, **{**kw, "splits": {"train": 4, "valid": 1}})
    assert open_dataset(out).attrs["split_trajectories"] == 4 and not (out / "test.zarr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ks"]  # the old copy is gone
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="readme.txt"):
        import_dataset(netcdf, other, overwrite=True, **kw)
    assert (other / "readme.txt").read_text() == "mine"
    # a foreign zarr store: refused by the readers as it is (what sns-train said before sns-import),
    # imported like the netCDF file
    foreign = tmp_path / "foreign.zarr"
    jaxcfd_like().to_zarr(foreign, consolidated=False)  # as many tools write them
    with pytest.raises(DatasetError, match="not an sns data set"):
        check_store(foreign)
    z = import_dataset(foreign, tmp_path / "from-zarr", **kw)
    np.testing.assert_array_equal(open_dataset(z)["vorticity"].values, field_values()[:3].transpose(0, 1, 3, 2))


def test_split_assignment_rules():
    assert split_assignment({"train": 0.8, "valid": 0.1, "test": 0.1}, 10) == {
        "train": list(range(8)), "valid": [8], "test": [9]}
    assert {k: len(v) for k, v in split_assignment(None, 3).items()} == {"train": 1, "valid": 1, "test": 1}
    shuffled = split_assignment({"train": 3, "valid": 1, "test": 1}, 5, shuffle=True, seed=1)
    assert sorted(i for v in shuffled.values() for i in v) == list(range(5)) and shuffled != split_assignment(
        {"train": 3, "valid": 1, "test": 1}, 5)
    assert split_assignment({"train": 2, "valid": 0}, 5) == {"train": [0, 1]}
    with pytest.raises(ValueError, match=re.escape("unknown splits ['training']")):
        split_assignment({"training": 1.0}, 5)
    with pytest.raises(ValueError, match="train split needs at least one"):
        split_assignment({"valid": 2}, 5)
    with pytest.raises(ValueError, match=re.escape("sum to 1, got {'train': 0.5, 'valid': 0.2} (sum 0.7)")):
        split_assignment({"train": 0.5, "valid": 0.2}, 5)
