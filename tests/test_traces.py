"""sns-traces (sns.traces): a noisy scalar series and a full-state CSV end to end, the decision
framework, and the bad inputs a user will try (each a clear error naming the value, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr

from sns.traces import choose_generator, load_series, make_traces


@pytest.fixture(scope="module")
def lorenz_csv(tmp_path_factory):
    from sns.systems.lorenz import Lorenz63

    s = Lorenz63()
    u = s.step(s.initial_condition(1, torch.Generator().manual_seed(0)), 2000)
    xs = []
    for _ in range(1500):  # frames every 0.05
        u = s.step(u, 5)
        xs.append(u[0].double().numpy())
    x = np.array(xs)
    noisy = x[:, 0] + 0.05 * x[:, 0].std() * np.random.default_rng(0).standard_normal(len(x))
    path = tmp_path_factory.mktemp("csv") / "l63.csv"
    np.savetxt(path, np.c_[np.arange(len(x)) * 0.05, noisy, x], delimiter=",", header="t,x_noisy,x,y,z",
               comments="")
    return path


def test_noisy_scalar_series_end_to_end(lorenz_csv, tmp_path):
    out = tmp_path / "tr"
    rep = make_traces(lorenz_csv, out, columns=["x_noisy"], time_column="t", denoise="bayes", generator="auto",
                      steps=20, n_traces=4, length=300, progress=False)
    assert rep["generator"] == "gan" and "partial observation" in rep["reason"]  # the decision framework
    e = rep["embedding"]
    assert not e["full_state"] and e["delay"] >= 1 and e["dim"] >= 2 and np.isfinite(e["D2"])
    assert rep["denoise"]["rule"] == "bayes"
    sigma = rep["denoise"]["noise_sigma"][0]
    assert 0.2 < sigma < 0.6  # added: 5% of x's std (~7.9) = 0.39
    ds = xr.open_zarr(out / "traces.zarr", consolidated=False)
    assert ds["traces"].shape == (4, 300, e["dim"]) and ds.attrs["generator"] == "gan"
    assert json.loads(ds.attrs["embedding"])["delay"] == e["delay"] and len(json.loads(ds.attrs["coordinate_names"])) == e["dim"]
    np.testing.assert_allclose(ds["time"].values[:3], [0, 0.05, 0.1])
    v = rep["validation"]
    for k in ("w1_over_std_mean", "D2_real", "psd_log10_distance", "divergence_error", "forecast_score"):
        assert k in v and np.isfinite(v[k]), k
    assert all((out / "figures" / f).exists() for f in ("marginals.png", "psd.png", "traces.png"))
    assert json.loads((out / "report.json").read_text())["generator"] == "gan"
    assert "delay embedding of x_noisy" in (out / "report.md").read_text()
    assert not list(tmp_path.glob("tr/.traces.zarr.partial-*"))


def test_full_state_csv_with_the_cli(lorenz_csv, tmp_path):
    out = tmp_path / "full"
    r = subprocess.run([sys.executable, "-m", "sns.cli.traces", f"input={lorenz_csv}", "columns=[x,y,z]",
                        "dt=0.05", "steps=5", "n_traces=2", "length=200", "node.window=2", "progress=false",
                        f"out_dir={out}"], check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Neural ODE" in r.stdout and "state: full (3 columns)" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["generator"] == "node" and rep["embedding"]["full_state"] and rep["embedding"]["dim"] == 3
    assert xr.open_zarr(out / "traces.zarr", consolidated=False)["traces"].shape == (2, 200, 3)


def test_hybrid_node_then_gan(lorenz_csv, tmp_path):
    rep = make_traces(lorenz_csv, tmp_path / "hy", columns=["x", "y", "z"], dt=0.05, generator="hybrid", steps=5,
                      n_traces=3, length=100, node={"window": 2}, hybrid={"node_traces": 4, "node_length": 64},
                      progress=False)
    assert rep["generator"] == "hybrid" and rep["training"]["node_traces"] == 4
    assert xr.open_zarr(tmp_path / "hy" / "traces.zarr", consolidated=False)["traces"].shape == (3, 100, 3)


def test_decision_framework():
    assert choose_generator(True, True)[0] == "hmc"
    assert choose_generator(False, False)[0] == "gan"
    assert choose_generator(True, False)[0] == "node"
    assert choose_generator(False, False, "node") == ("node", "chosen by the user")
    with pytest.raises(ValueError, match="hmc needs the full state"):
        choose_generator(False, False, "hmc")
    with pytest.raises(ValueError, match="generator must be one of"):
        choose_generator(True, False, "vae")


def _csv(path, header, rows):
    path.write_text(header + "\n" + "\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("case,match", [
    ("constant", "column 'x' is constant"),
    ("short", "has 100 samples per trajectory; sns-traces needs at least 500"),
    ("nan", "column 'x' has a non-finite value .* at row 321"),
    ("text", "column 'x' is not numeric: value 'abc' at row 7"),
    ("missing", r"column\(s\) \['w'\] not in"),
    ("no_dt", "give the sampling interval dt"),
    ("uneven", "not uniformly spaced"),
    ("embedding", "spans .* samples, more than a quarter"),
])
def test_bad_inputs_name_the_value(tmp_path, case, match):
    t = np.arange(600) * 0.1
    x = np.sin(t) + 0.3 * np.sin(3.1 * t)
    kw = {"time_column": "t", "columns": ["x"]}
    rows = list(zip(t, x))
    if case == "constant":
        rows = [(a, 1.5) for a in t]
    elif case == "short":
        rows = rows[:100]
    elif case == "nan":
        rows[321] = (t[321], "nan")
    elif case == "text":
        rows[7] = (t[7], "abc")
    elif case == "missing":
        kw["columns"] = ["w"]
    elif case == "no_dt":
        kw = {"columns": ["x"]}
        rows = [(a, b) for a, b in rows]
    elif case == "uneven":
        rows[10] = (t[10] + 0.05, x[10])
    elif case == "embedding":
        kw.update(delay=60, dim=4)
    path = _csv(tmp_path / "in.csv", "t,x", rows)
    if case == "no_dt":
        path = _csv(tmp_path / "in.csv", "x", [(b,) for _, b in rows])
    with pytest.raises(ValueError, match=match):
        make_traces(path, tmp_path / "out", steps=1, progress=False, **kw)
    assert not (tmp_path / "out").exists()  # nothing written


def test_cli_error_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sns.cli.traces", f"input={tmp_path / 'none.csv'}",
                        f"out_dir={tmp_path / 'o'}"], check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "sns-traces: error: input" in r.stderr and "does not exist" in r.stderr


def test_xarray_input(tmp_path):
    t = np.arange(800) * 0.1
    ds = xr.Dataset({"v": (("time",), np.sin(t) * np.cos(0.37 * t))}, coords={"time": t})
    ds.to_netcdf(tmp_path / "v.nc")
    s = load_series(tmp_path / "v.nc")
    assert s.values.shape == (1, 800, 1) and s.columns == ["v"] and s.dt == pytest.approx(0.1)
