"""Ensembles (issue 17): ensemble scores on cases with known answers (sns.metrics.ensemble), and
``sns-rollout ensemble=M`` -> ``sns-evaluate`` at toy size (tiny Lorenz-63, untrained surrogate).

Known answers: a perfectly calibrated Gaussian ensemble (truth and members exchangeable draws of
N(mu, s^2)) has spread s, RMSE of the mean s sqrt(1 + 1/M), spread-skill 1 and a fair CRPS whose
expectation is the closed form (Gneiting & Raftery 2007); the empirical ("biased") CRPS exceeds it
by s / (M sqrt(pi)); an ensemble with c times the spread has spread-skill
sqrt((M + 1) / M) c / sqrt(1 + c^2 / M); a collapsed ensemble has spread 0 and CRPS = |error|.
"""

import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from sns.metrics import (
    crps_ensemble,
    crps_gaussian,
    ensemble_mean_rmse,
    ensemble_scores,
    ensemble_spread,
    spread_skill_ratio,
)

PNG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- metrics


def test_crps_gaussian_closed_form_is_the_integral():
    """CRPS(F, y) = int (F(x) - 1{x >= y})^2 dx, by quadrature."""
    for mu, s, y in ((0.0, 1.0, 0.0), (1.0, 2.0, -0.5), (-3.0, 0.3, -2.0), (5.0, 1.5, 9.0)):
        f = lambda x, mu=mu, s=s, y=y: (stats.norm.cdf(x, mu, s) - (x >= y)) ** 2
        lo, hi = mu - 12 * s, mu + 12 * s
        val = integrate.quad(f, lo, y, epsabs=1e-13)[0] + integrate.quad(f, y, hi, epsabs=1e-13)[0]
        assert crps_gaussian(mu, s, y) == pytest.approx(val, rel=1e-8)
    assert crps_gaussian(1.0, 0.0, 3.5) == 2.5  # a point mass: the absolute error
    assert crps_gaussian(0.0, 1.0, 0.0) == pytest.approx((math.sqrt(2) - 1) / math.sqrt(math.pi), rel=1e-12)


def test_crps_estimators_equal_the_double_sum():
    rng = np.random.default_rng(1)
    for m in (2, 3, 7):
        ens, y = rng.normal(size=(m, 5, 4)), rng.normal(size=(5, 4))
        skill = np.abs(ens - y).mean(0)
        pairs = np.abs(ens[:, None] - ens[None]).sum((0, 1))
        np.testing.assert_allclose(crps_ensemble(ens, y), skill - pairs / (2 * m * (m - 1)), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(crps_ensemble(ens, y, fair=False), skill - pairs / (2 * m * m), rtol=1e-12,
                                   atol=1e-14)
        # the member axis may be anywhere
        np.testing.assert_allclose(crps_ensemble(np.moveaxis(ens, 0, 2), y, member_axis=2), crps_ensemble(ens, y),
                                   rtol=1e-14)
    one = rng.normal(size=(1, 6))
    np.testing.assert_array_equal(crps_ensemble(one, np.zeros(6), fair=False), np.abs(one[0]))
    assert np.isnan(crps_ensemble(one, np.zeros(6))).all() and np.isnan(ensemble_spread(one))
    with pytest.raises(ValueError, match="without the member axis"):
        crps_ensemble(np.zeros((4, 3)), np.zeros(4))


@pytest.mark.parametrize("c", [1.0, 2.0, 0.5])
def test_gaussian_ensemble_known_answers(c):
    """Truth ~ N(mu_i, s^2), M = 10 members ~ N(mu_i, (c s)^2), 40000 cases; c = 1 is calibrated."""
    rng = np.random.default_rng(0)
    n, m, s = 40_000, 10, 1.5
    mu = 3.0 * rng.normal(size=n)
    y = mu + s * rng.normal(size=n)
    ens = mu + c * s * rng.normal(size=(m, n))
    sc = ensemble_scores(ens, y)
    expected_ssr = math.sqrt((m + 1) / m) * c / math.sqrt(1 + c * c / m)
    assert sc["spread_skill"] == pytest.approx(expected_ssr, rel=0.02)
    assert sc["spread"] == pytest.approx(c * s, rel=0.01)
    assert sc["rmse"] == pytest.approx(s * math.sqrt(1 + c * c / m), rel=0.01)
    assert float(spread_skill_ratio(ens, y)) == pytest.approx(float(sc["spread_skill"]), rel=1e-12)
    assert float(ensemble_mean_rmse(ens, y)) == pytest.approx(float(sc["rmse"]), rel=1e-12)
    # CRPS: the fair estimator is unbiased for the closed form of the members' distribution
    fair, exact = crps_ensemble(ens, y), crps_gaussian(mu, c * s, y)
    se = (fair - exact).std() / math.sqrt(n)
    assert abs(fair.mean() - exact.mean()) < 4 * se
    assert float(sc["crps"]) == pytest.approx(fair.mean(), rel=1e-12)
    # ... the empirical one is biased high by E|X - X'| / (2M) = c s / (M sqrt(pi))
    biased = crps_ensemble(ens, y, fair=False)
    assert (biased - fair).mean() == pytest.approx(c * s / (m * math.sqrt(math.pi)), rel=0.02)
    if c == 1.0:  # calibrated: E CRPS = E|X - X'| / 2 = s / sqrt(pi)
        assert fair.mean() == pytest.approx(s / math.sqrt(math.pi), abs=4 * fair.std() / math.sqrt(n))


def test_scores_per_lead_time():
    """(member, trajectory, time, dim) with a spread that grows with lead time: one calibrated
    score per time when averaging over trajectories and coordinates."""
    rng = np.random.default_rng(2)
    m, n, t, d = 8, 2000, 5, 3
    s = 0.1 * (1 + np.arange(t))[None, :, None]  # (1, T, 1)
    mu = rng.normal(size=(n, t, d))
    y = mu + s * rng.normal(size=(n, t, d))
    ens = mu + s * rng.normal(size=(m, n, t, d))
    sc = ensemble_scores(ens, y, member_axis=0, axis=(0, 2))
    assert sc["spread"].shape == (t,)
    np.testing.assert_allclose(sc["spread"], s.ravel(), rtol=0.02)
    np.testing.assert_allclose(sc["spread_skill"], 1.0, atol=0.05)
    np.testing.assert_allclose(sc["crps"], s.ravel() / math.sqrt(math.pi), rtol=0.04)


def test_collapsed_ensemble_has_zero_spread():
    rng = np.random.default_rng(3)
    y = rng.normal(size=(50, 3))
    forecast = y + rng.normal(size=(50, 3))
    ens = np.repeat(forecast[None], 6, axis=0)  # six identical members: a deterministic forecast
    sc = ensemble_scores(ens, y)
    assert sc["spread"] == 0 and sc["var"] == 0 and sc["spread_skill"] == 0
    err = np.abs(forecast - y)
    np.testing.assert_allclose(crps_ensemble(ens, y), err, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(crps_ensemble(ens, y, fair=False), err, rtol=1e-12, atol=1e-15)
    assert sc["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-12)
    assert torch.is_tensor(torch.as_tensor(ens)) and ensemble_spread(torch.as_tensor(ens)) == 0  # tensors accepted


# ----------------------------------------------------------------------------- CLI

SMALL = {"n_frames": 40, "spinup_steps": 50, "trajectories": {"train": 2, "valid": 1, "test": 2}}
SPEC = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 8}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from sns.data.generate import generate_dataset
    from sns.export import save_model
    from sns.training import build_model

    root = tmp_path_factory.mktemp("ens")
    data = generate_dataset("lorenz63", "cpu", out=root / "lorenz63-cpu", overrides=SMALL, progress=None)
    torch.manual_seed(0)
    model = build_model(SPEC)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    sur = save_model(model, SPEC, root / "s.safetensors", {"task": "surrogate", "data": {"system": "lorenz63"}})
    return root, data, sur


def compose(overrides, config="rollout"):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from sns.cli import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return hcompose(config_name=config, overrides=overrides)


def _roll(setup, out, *extra):
    from sns.cli.rollout import run_rollout

    _, data, sur = setup
    return run_rollout(compose([f"surrogate={sur}", f"data_dir={data}", "n_steps=30", "chunk=8", "trajectories=2",
                                "torch_threads=1", f"out={out}", *extra]))


def test_rollout_ensemble_and_evaluate(setup, tmp_path):
    from omegaconf import OmegaConf

    from sns.evaluation import Source, _ensemble, _pearson, evaluate
    from sns.cli.rollout import default_out, run_identity
    from sns.rollout import open_rollout

    _, data, _ = setup
    noisy = _roll(setup, tmp_path / "noisy.zarr", "ensemble=5", "gaussian.sigma=0.05")
    det = _roll(setup, tmp_path / "det.zarr", "ensemble=3")
    single = _roll(setup, tmp_path / "single.zarr")
    assert noisy.status == det.status == single.status == "completed"
    ds = open_rollout(tmp_path / "noisy.zarr")
    assert ds.sizes["trajectory"] == 10 and ds.attrs["ensemble"] == 5 and ds.attrs["initial_conditions"] == 2
    x = ds["state"].values.reshape(2, 5, 31, 3)  # (initial condition, member, time, dim)
    assert (x[:, :, 0] == x[:, :1, 0]).all()  # the members share their initial condition
    assert (x[:, 1:, 1:] != x[:, :1, 1:]).all()  # ... and then differ by the sampler's noise
    xd = open_rollout(tmp_path / "det.zarr")["state"].values.reshape(2, 3, 31, 3)
    assert (xd == xd[:, :1]).all()  # deterministic: identical members
    np.testing.assert_array_equal(xd[:, 0], open_rollout(tmp_path / "single.zarr")["state"].values)

    rep = evaluate(data / "test.zarr", {"noisy": tmp_path / "noisy.zarr", "det": tmp_path / "det.zarr",
                                        "single": tmp_path / "single.zarr"}, tmp_path / "rep", chunk=7, max_lag=5)
    out = tmp_path / "rep"
    for name in ("ensemble.png", "ensemble.csv", "ensemble.json", "metrics.json"):
        assert (out / name).exists()
    assert (out / "ensemble.png").read_bytes()[:8] == PNG and out / "ensemble.png" in rep["figures"]
    rows = {r["method"]: r for r in json.loads((out / "metrics.json").read_text())}
    assert "ens_rmse" not in rows["single"] and rows["noisy"]["members"] == 5 and rows["det"]["members"] == 3
    for name in ("noisy", "det"):
        for k in ("ens_rmse", "ens_spread", "ens_spread_skill", "ens_crps"):
            assert math.isfinite(rows[name][k])
    assert rows["det"]["ens_spread"] == 0 and rows["det"]["ens_spread_skill"] == 0
    assert rows["noisy"]["ens_spread"] > 0 and rows["noisy"]["ens_spread_skill"] > 0
    curves = json.loads((out / "ensemble.json").read_text())
    assert set(curves) == {"noisy", "det"} and curves["noisy"]["lead"] == list(range(31))
    d, n = curves["det"], curves["noisy"]
    assert all(v == 0 for v in d["spread"])  # a deterministic rollout with M > 1 has spread 0
    np.testing.assert_allclose(d["crps"], d["crps_biased"], rtol=1e-12, atol=1e-12)  # CRPS = |error| for both
    assert all(v > 0 for v in n["spread"][1:]) and n["spread"][0] == 0
    assert n["rmse"][0] < 1e-4  # lead 0: the initial frames themselves (float32 round trip)
    assert all(math.isfinite(v) for k in ("rmse", "spread", "crps", "crps_biased") for v in n[k])

    # the numbers: recomputed from the stores in physical units
    ref = Source(data / "test.zarr").read(0, 31, slice(0, 2))  # (2, 31, 3)
    phys = Source(tmp_path / "noisy.zarr").read(0, 31).reshape(2, 5, 31, 3)
    sc = ensemble_scores(phys, ref, member_axis=1, axis=(0, 2))
    for k in ("rmse", "spread", "crps", "crps_biased"):
        np.testing.assert_allclose(n[k], sc[k], rtol=1e-10, atol=1e-12)
    # consistency: the mean beats the members (convexity); fair <= empirical CRPS <= members' MAE
    member_rmse = np.sqrt(((phys - ref[:, None]) ** 2).mean(axis=(0, 1, 3)))
    assert (np.asarray(n["rmse"]) <= member_rmse + 1e-12).all()
    mae = np.abs(phys - ref[:, None]).mean(axis=(0, 1, 3))
    assert (np.asarray(n["crps"]) <= np.asarray(n["crps_biased"]) + 1e-12).all()
    assert (np.asarray(n["crps_biased"]) <= mae + 1e-12).all()
    # the deterministic ensemble's RMSE is the single rollout's, its CRPS that rollout's mean |error|
    one = Source(tmp_path / "single.zarr").read(0, 31)
    np.testing.assert_allclose(d["rmse"], np.sqrt(((one - ref) ** 2).mean(axis=(0, 2))), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d["crps"], np.abs(one - ref).mean(axis=(0, 2)), rtol=1e-10, atol=1e-12)
    with open(out / "ensemble.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 * 31 and table[0]["method"] == "noisy" and float(table[1]["time"]) > 0
    # Pearson against the reference: members matched to their own initial condition
    test_src = Source(data / "test.zarr")
    np.testing.assert_allclose(_pearson(Source(tmp_path / "det.zarr"), test_src, 7),
                               _pearson(Source(tmp_path / "single.zarr"), test_src, 7), rtol=1e-12)

    # ensemble_leads caps the lead times; a bad value is refused
    capped = _ensemble(Source(tmp_path / "noisy.zarr"), test_src, 4, 5)
    assert list(capped["lead"]) == list(range(6))
    np.testing.assert_allclose(capped["crps"], n["crps"][:6], rtol=1e-12)
    with pytest.raises(ValueError, match="ensemble_leads"):
        evaluate(data / "test.zarr", {"noisy": tmp_path / "noisy.zarr"}, tmp_path / "rep3", ensemble_leads=0)

    # default store paths: ensemble=1 keeps the path it had before the option; M > 1 gets another
    cfg1 = compose([f"data_dir={data}", "ensemble=1"])
    cfg4, legacy = cfg1.copy(), cfg1.copy()
    cfg4.ensemble = 4
    OmegaConf.set_struct(legacy, False)
    del legacy["ensemble"]
    attrs = {"method": "surrogate"}
    ident = run_identity(attrs)
    assert default_out(cfg1, attrs, ident) == default_out(legacy, attrs, ident) != default_out(cfg4, attrs, ident)
    with pytest.raises(ValueError, match="ensemble must be an integer >= 1"):
        _roll(setup, tmp_path / "bad.zarr", "ensemble=0")


class _NoisyWithFailure(torch.nn.Module):
    """x -> x + 0.01 noise; row ``bad`` becomes NaN at call ``at`` (a member that blows up)."""

    def __init__(self, bad: int, at: int) -> None:
        super().__init__()
        self.bad, self.at, self.n = bad, at, 0
        self.last_calls = None

    def forward(self, x, generator=None):
        self.n += 1
        out = x + 0.01 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        if self.n == self.at:
            out[self.bad] = float("nan")
        self.last_calls = torch.full((x.shape[0],), 2)
        return out


def test_retired_member_is_left_out_and_reported(setup, tmp_path):
    """One member of an ensemble blows up: with on_failure="retire" the others run on, and
    sns-evaluate scores the survivors, the whole ensembles, and says who retired."""
    from sns.evaluation import Source, evaluate
    from sns.rollout import open_rollout, rollout

    _, data, _ = setup
    ref = Source(data / "test.zarr")
    x0 = torch.as_tensor(ref.read(0, 1, slice(0, 2))[:, 0], dtype=torch.float32).repeat_interleave(3, 0)
    attrs = {"ensemble": 3, "initial_conditions": 2, "split": "test", "start_frame": 0}
    res = rollout(_NoisyWithFailure(bad=4, at=10), x0, 30, store=tmp_path / "r.zarr", chunk=8, seed=0,
                  attrs=attrs, on_failure="retire")
    assert res.status == "completed" and res.retired == {4: 10}
    rep = evaluate(data / "test.zarr", {"sns": tmp_path / "r.zarr"}, tmp_path / "rep", chunk=7, max_lag=5)
    row = next(r for r in rep["rows"] if r["method"] == "sns")
    assert row["retired"] == 1 and row["calls_mean"] == 2.0  # the retired member's zeros are not calls
    assert all(math.isfinite(v) for k, v in row.items() if isinstance(v, float))  # no NaN leaks
    assert any("1 of 6 trajectories retired" in n and "{4: 10}" in n for n in rep["notes"])
    assert "retired" in (tmp_path / "rep" / "metrics.md").read_text()
    # the ensemble scores: initial condition 0 only (condition 1 lost member 4), by hand
    e = rep["ensemble"]["sns"]
    assert e["initial_conditions"] == 1 and e["members"] == 3
    x = open_rollout(tmp_path / "r.zarr")["state"].values.astype(np.float64)[:3][None]  # (1, 3, 31, 3)
    sc = ensemble_scores(x, ref.read(0, 31, slice(0, 1)), member_axis=1, axis=(0, 2))
    np.testing.assert_allclose(e["crps"], sc["crps"], rtol=1e-10, atol=1e-12)
    # the pooled statistics read the 5 survivors
    assert Source(tmp_path / "r.zarr").read(0, 31).shape == (5, 31, 3)


def test_rollout_cli_on_failure(setup, tmp_path):
    from sns.rollout import open_rollout

    res = _roll(setup, tmp_path / "ret.zarr", "on_failure=retire")
    assert res.status == "completed" and res.retired == {}
    assert open_rollout(tmp_path / "ret.zarr").attrs["rollout_retired"] == {}
    with pytest.raises(ValueError, match="on_failure must be one of"):
        _roll(setup, tmp_path / "bad.zarr", "on_failure=skip")
    assert not (tmp_path / "bad.zarr").exists()


def test_rollout_cli_precision(setup, tmp_path):
    from sns.rollout import open_rollout

    a = _roll(setup, tmp_path / "fp32.zarr")
    b = _roll(setup, tmp_path / "bf16.zarr", "precision=bf16")
    assert a.status == b.status == "completed"
    da, db = open_rollout(tmp_path / "fp32.zarr"), open_rollout(tmp_path / "bf16.zarr")
    assert db.attrs["precision"] == "bf16" and "precision" not in da.attrs  # fp32 stores: as before
    assert db["state"].dtype == np.float32
    x, y = da["state"].values, db["state"].values
    assert 0 < np.abs(x[:, 1] - y[:, 1]).max() < 1e-2 * np.abs(x).max()  # bf16 matmuls, one step
    with pytest.raises(ValueError, match="precision must be one of"):
        _roll(setup, tmp_path / "bad.zarr", "precision=int8")
    assert not (tmp_path / "bad.zarr").exists()
