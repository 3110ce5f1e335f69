"""Baselines (sns.baselines): exact-oracle checks of each sampler, the Thermalizer's rules, the
PDE-Refiner schedule, and each baseline trained for a few steps through sns-train and rolled out
through sns-rollout on tiny Lorenz-63 data."""


import numpy as np
import pytest
import torch

from sns.baselines import (
    ACDM,
    GaussianApproximation,
    PDERefiner,
    Thermalizer,
    pde_refiner_loss,
    pde_refiner_schedule,
)
from sns.data.generate import generate_dataset
from sns.diffusion import cosine_schedule, linear_schedule
from sns.diffusion.paths import acdm_path, traverse
from sns.export import load_model
from sns.nets.base import DenoiserOutput, PairDenoiser
from sns.nets.mlp import MLPPairDenoiser
from sns.rollout import StopRollout, open_rollout, rollout

A = torch.tensor([[0.9, -0.2, 0.0], [0.1, 0.8, 0.3], [0.0, -0.3, 0.7]])


def target(x):
    """The 'true' deterministic transition the oracles know: x_t = A x_{t-1}."""
    return x @ A.T


class OracleDiffusion(PairDenoiser):
    """Explicit pair denoiser that returns the exact noise for x_t = A x_{t-1} (x_{t-1} = self.cond)."""

    blind = False

    def __init__(self, schedule, dim=3):
        super().__init__()
        self.schedule, self.n_levels, self.state_shape = schedule, schedule.n_levels, (dim,)
        self.cond = None
        self.calls = 0

    def forward(self, x_prev, x_next, i2=None, i1=None):
        self.calls += 1
        abar = self.schedule.abar.float()[i1][:, None]
        y = target(self.cond)[: x_next.shape[0]] if self.idx is None else target(self.cond)[self.idx]
        eps = (x_next - abar.sqrt() * y) / (1 - abar).sqrt()
        logits = torch.zeros(x_next.shape[0], self.n_levels)
        return DenoiserOutput(torch.zeros_like(x_prev), eps, logits, logits)

    idx = None

    def estimate_levels(self, x_prev, x_next):
        z = torch.zeros(x_next.shape[0], self.n_levels)
        return z, z


def test_acdm_exact_oracle_returns_the_target_with_S_calls():
    sch = linear_schedule(20, 5e-4 * 5, 0.1 * 5 / 10)
    oracle = OracleDiffusion(sch)
    x = torch.randn(5, 3)
    oracle.cond = x
    step = ACDM(oracle, sch)
    out = step(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, target(x), rtol=1e-4, atol=1e-4)
    assert step.last_calls == 20 == oracle.calls


def test_traverse_condition_renoises_and_ends_clean():
    """ACDM's re-noised conditioning: x_{t-1} is never denoised, ends equal to the clean condition."""
    sch = linear_schedule(10, 1e-3, 0.2)
    oracle = OracleDiffusion(sch)
    x = torch.randn(4, 3)
    oracle.cond = x
    res = traverse(oracle, sch, torch.randn(4, 3), torch.randn(4, 3), acdm_path(10), condition=x,
                   generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(res.x_prev, x)
    assert int(res.calls[0]) == 10 == res.network_calls


def test_acdm_refuses_blind_denoiser():
    sch = cosine_schedule(10)
    with pytest.raises(ValueError, match="explicit"):
        ACDM(MLPPairDenoiser(3, 10, width=16, blind=True), sch)


def test_pde_refiner_schedule_matches_formula():
    K, m = 3, 4e-7
    t = pde_refiner_schedule(K, m)
    # refinement step r = K - k adds variance beta_k = m^(r/K); k = K is pure noise (beta = 1)
    expected = torch.tensor([m ** (r / K) for r in (3, 2, 1, 0)], dtype=torch.float64)
    torch.testing.assert_close(t["betas"], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(t["noise_std"], (1 - torch.cumprod(1 - expected, 0)).sqrt())
    assert t["abar"][-1] == 0
    # small betas: std_k ~ sqrt(sum_{j<=k} beta_j) ~ m^(r/(2K)) for r = K - k
    np.testing.assert_allclose(t["noise_std"][:3].numpy(), [6.3246e-4, 7.3952e-3, 8.6153e-2], rtol=1e-4)
    with pytest.raises(ValueError, match="n_refinement_steps"):
        pde_refiner_schedule(0)
    with pytest.raises(ValueError, match="min_noise_std"):
        pde_refiner_schedule(3, 0.0)


class OracleV(OracleDiffusion):
    """Returns the exact v for the target (v = sqrt(abar) e - sqrt(1 - abar) y)."""

    def forward(self, x_prev, x_next, i2=None, i1=None):
        self.calls += 1
        abar = self.tab["abar"].float()[i1][:, None]
        y = target(x_prev)  # PDE-Refiner sees the clean condition
        eps = torch.where(abar < 1 - 1e-12, (x_next - abar.sqrt() * y) / (1 - abar).clamp_min(1e-30).sqrt(), 0 * y)
        v = abar.sqrt() * eps - (1 - abar).sqrt() * y
        logits = torch.zeros(x_next.shape[0], self.n_levels)
        return DenoiserOutput(torch.zeros_like(x_prev), v, logits, logits)


def test_pde_refiner_exact_oracle_and_calls():
    oracle = OracleV(cosine_schedule(4))
    oracle.tab = pde_refiner_schedule(3, 4e-7)
    step = PDERefiner(oracle, 3, 4e-7)
    x = torch.randn(6, 3)
    out = step(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, target(x), rtol=1e-4, atol=1e-4)
    assert step.last_calls == 4 == oracle.calls
    with pytest.raises(ValueError, match="n_levels = K \\+ 1"):
        PDERefiner(MLPPairDenoiser(3, 10, width=16, blind=False), 3)


def test_pde_refiner_loss_trains():
    """The loss falls and the K + 1-call sampler then forecasts the target (the small-noise
    refinement levels have a high loss floor: their v is almost the noise itself)."""
    torch.manual_seed(0)
    net = MLPPairDenoiser(3, 4, width=64, blind=False)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    x = torch.randn(256, 3)
    with torch.no_grad():
        first = float(pde_refiner_loss(net, x, target(x), generator=torch.Generator().manual_seed(0)))
    for _ in range(300):
        loss = pde_refiner_loss(net, x, target(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(pde_refiner_loss(net, x, target(x), generator=torch.Generator().manual_seed(0)))
        pred = PDERefiner(net)(x, generator=torch.Generator().manual_seed(1))
    assert last < 0.8 * first
    rmse = float((pred - target(x)).pow(2).mean().sqrt())
    assert rmse < 0.25 * float(target(x).std()), rmse


class LevelStub(PairDenoiser):
    """Classifier that reports fixed levels; eps = 0 (x0_hat = x / sqrt(abar))."""

    blind = True

    def __init__(self, levels, S=20, dim=3):
        super().__init__()
        self.levels, self.n_levels, self.state_shape = levels, S, (dim,)

    def estimate_levels(self, x_prev, x_next):
        logits = torch.nn.functional.one_hot(self.levels, self.n_levels).float()
        return logits, logits

    def forward(self, x_prev, x_next, i2=None, i1=None):
        z = torch.zeros(x_next.shape[0], self.n_levels)
        return DenoiserOutput(torch.zeros_like(x_prev), torch.zeros_like(x_next), z, z)


def test_thermalizer_leaves_states_below_start_untouched():
    sch = cosine_schedule(20)
    levels = torch.tensor([0, 3, 6, 7, 12])
    therm = Thermalizer(LevelStub(levels), sch, surrogate=target, start=6, stop=4, limit=15)
    x = torch.randn(5, 3)
    out = therm(x, generator=torch.Generator().manual_seed(0))
    prop = target(x)
    below = levels <= 6
    torch.testing.assert_close(out[below], prop[below], rtol=0, atol=0)  # bit-identical
    assert not torch.allclose(out[~below], prop[~below])
    # 1 classifier call, plus level - stop reverse steps where thermalized
    assert therm.last_calls.tolist() == [1, 1, 1, 1 + 7 - 4, 1 + 12 - 4]
    assert therm.last_refined.tolist() == [False, False, False, True, True]


def test_thermalizer_limit_stops_the_rollout(tmp_path):
    sch = cosine_schedule(20)
    stub = LevelStub(torch.tensor([2, 2]))
    therm = Thermalizer(stub, sch, surrogate=target, start=6, stop=4, limit=15)
    with pytest.raises(StopRollout, match="exceeds the limit 15"):
        stub.levels = torch.tensor([2, 16])
        therm(torch.randn(2, 3))

    class Drift:
        """Levels rise by 4 per call: 2, 6, 10, 14, 18 -> the 5th step exceeds 15."""

        n = 0

        def __call__(self, x):
            Drift.n += 1
            stub.levels = torch.tensor([2, 4 * Drift.n - 2])
            return target(x)

    therm = Thermalizer(stub, sch, surrogate=Drift(), start=6, stop=4, limit=15)
    res = rollout(therm, torch.randn(2, 3), 20, store=tmp_path / "t.zarr", chunk=4)
    ds = open_rollout(tmp_path / "t.zarr")
    assert res.status == ds.attrs["rollout_status"] == "aborted"
    assert ds.attrs["rollout_stop_step"] == 5 and ds["state"].shape[1] == 5
    assert "exceeds the limit 15" in ds.attrs["rollout_message"]
    assert ds.attrs["rollout_bad_trajectories"] == [1]


def test_thermalizer_argument_errors():
    sch = cosine_schedule(20)
    stub = LevelStub(torch.tensor([0]))
    with pytest.raises(ValueError, match="must not exceed start"):
        Thermalizer(stub, sch, target, start=3, stop=4)
    with pytest.raises(ValueError, match=r"start must be an integer level in \[0, 20\)"):
        Thermalizer(stub, sch, target, start=20, stop=4)


def test_gaussian_approximation():
    x = torch.randn(4000, 3)
    assert torch.equal(GaussianApproximation(target)(x), target(x))
    g = GaussianApproximation(target, sigma=0.1)
    out = g(x, generator=torch.Generator().manual_seed(0))
    assert abs(float((out - target(x)).std()) - 0.1) < 0.005
    assert g.last_calls == 1
    with pytest.raises(ValueError, match="sigma"):
        GaussianApproximation(target, sigma=-1.0)


# ------------------------------------------------------------------ through sns-train / sns-rollout

SMALL = {"n_frames": 60, "spinup_steps": 100, "trajectories": {"train": 3, "valid": 2, "test": 2}}
FAST = ["experiment=lorenz63_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "data.batch_size=32",
        "data.max_val_windows=8", "torch_threads=1", "model.surrogate.val_horizon=3", "diffusion.n_levels=10"]


def _compose(config, overrides):
    from hydra import compose, initialize_config_dir

    from sns.cli import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from sns.cli.train import train

    root = tmp_path_factory.mktemp("baselines")
    generate_dataset("lorenz63", "cpu", out=root / "lorenz63-cpu", overrides=SMALL, progress=None)
    n = torch.get_num_threads()
    files = {}
    try:
        for task, extra in (("surrogate", []), ("acdm", ["model.acdm.module.n_levels=12"]),
                            ("thermalizer", []), ("pde_refiner", [])):
            run = root / task
            train(_compose("train", [*FAST, f"task={task}", *extra, f"paths.data_dir={root}",
                                     f"paths.run_dir={run}", f"paths.output_dir={run}"]))
            files[task] = run / f"{task}.safetensors"
    finally:
        torch.set_num_threads(n)
    return root, files


@pytest.mark.parametrize("method", ["surrogate", "acdm", "thermalizer", "pde_refiner"])
def test_train_and_rollout_each_baseline(trained, method, tmp_path):
    from sns.cli.rollout import run_rollout

    root, files = trained
    _, extra = load_model(files[method])
    if method != "surrogate":
        assert extra["method"] == method and extra["task"] == "denoiser"
    args = {"surrogate": [f"surrogate={files['surrogate']}", "gaussian.sigma=0.01"],
            "acdm": [f"denoiser={files['acdm']}"],
            "thermalizer": [f"surrogate={files['surrogate']}", f"denoiser={files['thermalizer']}",
                            "thermalizer.start=2", "thermalizer.stop=1", "thermalizer.limit=null", "thermalizer.clamp=3"],
            "pde_refiner": [f"denoiser={files['pde_refiner']}"]}[method]
    res = run_rollout(_compose("rollout", [*args, f"data_dir={root / 'lorenz63-cpu'}", "n_steps=8",
                                           "trajectories=2", f"out={tmp_path}/r.zarr", "chunk=4"]))
    ds = open_rollout(tmp_path / "r.zarr")
    assert res.status == "completed", res.message
    assert ds.attrs["method"] == method and ds["state"].shape == (2, 9, 3)
    assert np.isfinite(ds["state"].values).all()
    calls = ds["calls"].values[:, 1:]
    if method == "acdm":
        assert (calls == 12).all() and res.calls_mean == 12  # exactly S calls per step
    elif method == "pde_refiner":
        assert (calls == 4).all()
    elif method == "surrogate":
        assert (calls == 1).all()
    else:
        assert (calls >= 1).all() and res.calls_max <= 1 + 9 - 1


def test_rollout_cli_refuses_inconsistent_files(trained, tmp_path):
    from sns.cli.rollout import run_rollout

    root, files = trained
    data = f"data_dir={root / 'lorenz63-cpu'}"
    with pytest.raises(ValueError, match="uses no surrogate"):
        run_rollout(_compose("rollout", [f"surrogate={files['surrogate']}", f"denoiser={files['acdm']}", data,
                                         f"out={tmp_path}/a.zarr"]))
    with pytest.raises(ValueError, match="refines a surrogate"):
        run_rollout(_compose("rollout", [f"denoiser={files['thermalizer']}", data, f"out={tmp_path}/b.zarr"]))
    with pytest.raises(ValueError, match="nothing to roll out"):
        run_rollout(_compose("rollout", [data, f"out={tmp_path}/c.zarr"]))
