"""sns-evaluate: streamed statistics equal in-memory ones, the table separates a faithful rollout
from a collapsing one, files and figures are written."""

import json

import numpy as np
import pytest
import torch

from sns.evaluation import evaluate
from sns.data.generate import generate_dataset
from sns.data.io import open_dataset
from sns.metrics import energy_spectrum, spatiotemporal_correlation, wasserstein1_per_coordinate
from sns.rollout import rollout
from sns.systems import make_system

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def lorenz(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    out = root / "lorenz63-cpu"
    generate_dataset("lorenz63", "cpu", out=out, overrides={"n_frames": 400, "spinup_steps": 500, "trajectories": {
        "train": 2, "valid": 1, "test": 2}}, progress=None)
    return root, out


def test_vector_report(lorenz, tmp_path):
    root, data = lorenz
    test = open_dataset(data, "test")
    x_phys = torch.from_numpy(test["state"].values[:, 0]).double()
    off = np.asarray(test.attrs["norm_offset"])
    sc = np.asarray(test.attrs["norm_scale"])
    system = make_system("lorenz63", dt=0.01, dtype=torch.float64)
    save_every = int(test.attrs["save_every"])

    def exact(x):  # the solver in normalised units: a faithful "surrogate"
        phys = x * torch.as_tensor(sc) + torch.as_tensor(off)
        return (system.step(phys, save_every) - torch.as_tensor(off)) / torch.as_tensor(sc)

    def collapse(x):  # decays to the mean: loses the attractor
        return 0.9 * x

    x0 = (x_phys - torch.as_tensor(off)) / torch.as_tensor(sc)
    attrs = {"norm_offset": list(off), "norm_scale": list(sc), "split": "test", "start_frame": 0}
    for name, step in (("exact", exact), ("collapse", collapse)):
        rollout(step, x0, 399, store=tmp_path / f"{name}.zarr", chunk=50, attrs=attrs, dt=0.05)
    rep = evaluate(data / "test.zarr", {"exact": tmp_path / "exact.zarr", "collapse": tmp_path / "collapse.zarr"},
                   tmp_path / "report", chunk=64, burn=20, max_lag=10)
    rows = {r["method"]: r for r in rep["rows"]}
    # the exact solver reproduces the reference's invariant measure up to the burn-in
    ref = test["state"].values
    w1_ref = wasserstein1_per_coordinate(np.asarray(open_rollout_phys(tmp_path / "exact.zarr", off, sc))[:, 20:],
                                         ref).mean()
    assert rows["exact"]["w1_mean"] == pytest.approx(w1_ref, rel=0.02)
    # (2 trajectories x 20 time units: the sampling floor of W1 is ~1)
    assert rows["exact"]["w1_mean"] < 1.5 and rows["collapse"]["w1_mean"] > 5
    # the autocorrelation of the states after the burn-in (reference: from its first frame), max error
    from sns.metrics import autocorrelation

    acf = lambda a: autocorrelation(a, 10, time_axis=1)
    ex = np.asarray(open_rollout_phys(tmp_path / "exact.zarr", off, sc))
    assert rows["exact"]["acf_err"] == pytest.approx(float(np.nanmax(np.abs(acf(ex[:, 20:]) - acf(ref)))), rel=1e-6)
    assert rows["exact"]["acf_err"] < 0.2 < rows["collapse"]["acf_err"]
    assert rows["collapse"]["std_ratio"] < 0.1 and abs(rows["exact"]["std_ratio"] - 1) < 0.1
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert [r["method"] for r in saved] == ["reference", "exact", "collapse"]
    assert (tmp_path / "report" / "metrics.csv").read_text().startswith("method,")
    for f in rep["figures"]:
        assert f.read_bytes()[:8] == PNG


def open_rollout_phys(path, off, sc):
    from sns.rollout import open_rollout

    return open_rollout(path)["state"].values * sc + off


def test_field_report_streams_like_memory(tmp_path):
    """Kolmogorov-like fields: a store read in chunks of 7 gives the in-memory spectrum and C(tau)."""
    g = torch.Generator().manual_seed(0)
    T, N = 40, 16
    y = torch.arange(N) * 2 * np.pi / N
    base = torch.sin(4 * y)[:, None] * torch.ones(N)[None]
    frames = torch.stack([torch.roll(base + 0.3 * torch.randn(N, N, generator=g), t, dims=1)
                          for t in range(T)])[None, :, None]  # (1, T, 1, N, N)

    it = iter(range(1, T))

    def replay(x):
        return frames[:, next(it)].clone()

    rollout(replay, frames[:, 0], T - 1, store=tmp_path / "a.zarr", chunk=5, dt=0.1)
    rollout(lambda x: 0.5 * x, frames[:, 0], T - 1, store=tmp_path / "ref.zarr", chunk=5, dt=0.1)
    rep = evaluate(tmp_path / "ref.zarr", {"replay": tmp_path / "a.zarr"}, tmp_path / "rep", chunk=7, max_lag=5,
                   corr_steps=T - 1)
    # compare with the in-memory computations
    from sns.evaluation import Source, _field_stats

    st = _field_stats(Source(tmp_path / "a.zarr"), 0, 7, T - 1, 5, [])
    k, e = energy_spectrum(frames[0, :, 0].double())
    np.testing.assert_allclose(st["spectrum"], e.mean(0), rtol=1e-5)
    np.testing.assert_allclose(st["corr"], spatiotemporal_correlation(frames[0, :, 0].reshape(T, -1).double(), 5),
                               rtol=1e-5)
    from sns.metrics import radial_correlation, space_time_correlation

    _, prof = radial_correlation(space_time_correlation(frames[:, :, 0].double().numpy(), 5))
    np.testing.assert_allclose(st["corr_r"], prof, atol=1e-5)
    np.testing.assert_allclose(st["corr_r"][:, 0], st["corr"], atol=1e-5)  # |r| = 0 is C(tau)
    rows = {r["method"]: r for r in rep["rows"]}
    assert rows["reference"]["corr_r_err"] == 0 and rows["replay"]["corr_r_err"] > 0
    assert (tmp_path / "rep" / "corr_r_tau.png").exists()
    assert rows["replay"]["steps"] == T - 1 and rows["replay"]["status"] == "completed"
    assert rows["reference"]["spec_max_rel"] == 0
    assert len(rep["figures"]) >= 6
