"""Divergence regularizer (sns.losses.divergence): exact trace, Hutchinson's estimator, flow-map
divergence, data estimate, warm-up, the loss-term protocol in SurrogateModule, errors."""

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from scipy.linalg import expm

from sns.losses import (
    DivergenceRegularizer,
    WarmupSchedule,
    divergence,
    estimate_divergence,
    flow_map_divergence,
)
from sns.systems.lorenz import Lorenz63
from sns.training import SurrogateModule

LORENZ_DIV = -(10.0 + 1.0 + 8.0 / 3.0)


def test_exact_trace_is_the_lorenz63_divergence():
    s = Lorenz63()
    x = 10 * torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    div = divergence(s.rhs, x, "exact")
    assert div.shape == (64,)
    torch.testing.assert_close(div, torch.full((64,), LORENZ_DIV, dtype=torch.float64), rtol=0, atol=1e-5)
    # through the regularizer with the analytic target: zero error, zero loss
    reg = DivergenceRegularizer("system:lorenz63", field="vector_field")
    torch.testing.assert_close(reg.target(x), div.detach(), rtol=0, atol=1e-12)


def test_hutchinson_is_unbiased_with_variance_one_over_probes():
    """A random linear field f(x) = A x (D = 64) has the same Jacobian A at every point, so
    a batch of B points gives B independent estimates.  Rademacher probes: the variance of
    one probe is sum_{i<j} (A_ij + A_ji)^2, and K probes divide it by K."""
    D, B = 64, 4000
    g = torch.Generator().manual_seed(1)
    A = torch.randn(D, D, dtype=torch.float64, generator=g) / math.sqrt(D) - 0.5 * torch.eye(D, dtype=torch.float64)
    field = lambda x: x @ A.T
    x = torch.randn(B, D, dtype=torch.float64, generator=g)
    trace = A.diagonal().sum().item()
    S = A + A.T
    var1 = (S.triu(1) ** 2).sum().item()
    stds = {}
    for K in (1, 4, 16, 64):
        est = divergence(field, x, "hutchinson", n_probes=K, generator=g, create_graph=False)
        se = math.sqrt(var1 / K / B)
        assert abs(est.mean().item() - trace) < 4 * se, (K, est.mean().item(), trace)
        assert est.var().item() == pytest.approx(var1 / K, rel=0.1)
        stds[K] = est.std().item()
    # error shrinks like 1/sqrt(K)
    assert stds[4] / stds[1] == pytest.approx(0.5, rel=0.1)
    assert stds[64] / stds[1] == pytest.approx(0.125, rel=0.1)
    # one probe of a diagonal Jacobian is exact (no off-diagonal terms)
    d = torch.randn(D, dtype=torch.float64, generator=g)
    est = divergence(lambda x: x * d, x[:5], "hutchinson", n_probes=1, generator=g)
    torch.testing.assert_close(est, torch.full((5,), d.sum().item(), dtype=torch.float64))


def test_flow_map_divergence_is_exact_and_euler_field_is_biased():
    s = Lorenz63(dt=0.01)
    x = s.step(s.initial_condition(8, torch.Generator().manual_seed(2)), 500)
    step = lambda u: s.step(u, 5)
    fm = flow_map_divergence(step, x, 0.05)
    torch.testing.assert_close(fm, torch.full((8,), LORENZ_DIV, dtype=torch.float64), rtol=0, atol=2e-3)
    euler = divergence(lambda u: (step(u) - u) / 0.05, x)
    assert (euler - LORENZ_DIV).abs().max().item() > 1.0  # first-order estimate: O(dt) errors
    assert euler.std().item() > 1.0  # ... that vary from point to point
    reg = DivergenceRegularizer(LORENZ_DIV, field="flow_map", dt=0.05)
    torch.testing.assert_close(reg.divergence(step, x), fm)


def test_data_estimate_on_a_linear_flow():
    """Linear flow dx/dt = A x: the flow map is expm(A dt) everywhere, the local regression
    is exact, and log det expm(A dt) / dt = tr A."""
    rng = np.random.default_rng(3)
    A = rng.normal(size=(3, 3)) - 1.5 * np.eye(3)
    dt = 0.1
    M = expm(A * dt)
    x = rng.normal(size=(20, 3))
    traj = [x]
    for _ in range(30):
        traj.append(traj[-1] @ M.T)
    est = estimate_divergence(np.stack(traj, 1), dt, k=10, n_anchors=200)
    assert est["divergence"] == pytest.approx(np.trace(A), abs=1e-6)
    assert est["local"].shape == (200,)
    with pytest.raises(ValueError, match="k must be"):
        estimate_divergence(np.stack(traj, 1), dt, k=3)


def test_warmup_schedule():
    w = WarmupSchedule(start=2, ramp=4, weight=0.5)
    assert [w(t) for t in range(7)] == [0.0, 0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    assert w(1000) == 0.5
    step = WarmupSchedule(start=3, ramp=0, weight=2.0, by="step")
    assert [step(t) for t in range(5)] == [0.0, 0.0, 0.0, 2.0, 2.0]

    class M:
        current_epoch, global_step = 1, 10

    assert w.at(M()) == 0.0 and step.at(M()) == 2.0
    for bad in ({"start": -1}, {"ramp": 1.5}, {"weight": -1.0}, {"by": "batch"}):
        with pytest.raises(ValueError):
            WarmupSchedule(**bad)


class _Windows(torch.utils.data.Dataset):
    def __init__(self, n=64, T=3, seed=0):
        s = Lorenz63(dt=0.01)
        x = s.step(s.initial_condition(n, torch.Generator().manual_seed(seed)), 300)
        frames = [x]
        for _ in range(T - 1):
            frames.append(s.step(frames[-1], 5))
        self.w = (torch.stack(frames, 1) / 10).float()  # roughly normalised (diagonal scale)

    def __len__(self):
        return len(self.w)

    def __getitem__(self, i):
        return self.w[i]


@pytest.mark.parametrize("field", ["increment", "flow_map"])
def test_term_plugs_into_the_surrogate_module(field):
    torch.manual_seed(0)
    reg = DivergenceRegularizer(LORENZ_DIV, weight=1.0, start=1, ramp=0, field=field, dt=0.05, max_points=64)
    module = SurrogateModule({"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 32, "n_layers": 3}},
                             optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), val_rollout_steps=0,
                             loss_terms=[reg])
    batch = _Windows()[:][:16]
    # epoch 0: weight 0, the error is still logged, the term adds an exact zero
    module.log = lambda *a, **k: None
    v0, logs0 = reg(module, batch, {"inputs": batch[:, 0]})
    assert v0.item() == 0.0 and logs0["weight"] == 0.0
    assert logs0["err"].item() == pytest.approx(-LORENZ_DIV, rel=1e-3)  # zero-initialised: div 0
    del module.log
    loader = torch.utils.data.DataLoader(_Windows(), batch_size=16, shuffle=True)
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=6, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, loader)
    m = trainer.callback_metrics
    assert {"train/div", "train/div_err", "train/div_mean", "train/div_weight"} <= set(m)
    assert m["train/div_weight"].item() == 1.0
    assert m["train/div"].item() > 0
    # 12 steps with the term active pull the divergence towards the target
    x = _Windows(seed=1).w[:, 0]
    err = (reg.divergence(module.model, x, create_graph=False) - LORENZ_DIV).abs().mean().item()
    assert err < 0.5 * abs(LORENZ_DIV)


def test_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"shape \(4, 3\) to \(4, 2\)"):
        divergence(lambda u: u[:, :2], x)
    with pytest.raises(ValueError, match="shape"):
        divergence(lambda u: u.sum(1), x, "hutchinson")
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="n_probes must be a positive integer"):
            divergence(lambda u: u, x, "hutchinson", n_probes=bad)
        with pytest.raises(ValueError, match="n_probes"):
            DivergenceRegularizer(0.0, method="hutchinson", n_probes=bad)
    with pytest.raises(ValueError, match="valid choices"):
        divergence(lambda u: u, x, "trace")
    with pytest.raises(ValueError, match="method='exact'"):
        DivergenceRegularizer(0.0, field="flow_map", method="hutchinson", dt=0.1)
    with pytest.raises(ValueError, match="valid choices"):
        DivergenceRegularizer(0.0, field="euler")
    with pytest.raises(ValueError, match="valid choices"):
        DivergenceRegularizer("lorenz63")
    with pytest.raises(ValueError, match="data_dir"):
        DivergenceRegularizer("data")
    reg = DivergenceRegularizer(0.0, field="increment")  # no dt

    class Model(torch.nn.Module):
        def forward(self, u):
            return u

    with pytest.raises(ValueError, match="give dt"):
        reg.divergence(Model(), x)
    with pytest.raises(ValueError, match="no vector_field"):
        DivergenceRegularizer(0.0, field="vector_field").divergence(Model(), x)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        divergence(lambda u: 2 * u, x)


def test_targets_are_resolved_once_outside_the_term(tmp_path):
    """resolve_target does the data reads (dt, normalisation, solver parameters); the term built
    from a ResolvedTarget gives the same numbers as the deprecated data_dir= path, which warns."""
    from sns.data.generate import generate_dataset
    from sns.losses import ResolvedTarget, resolve_target

    data = generate_dataset("lorenz63", "cpu", out=tmp_path / "l63",
                            overrides={"n_frames": 30, "spinup_steps": 50,
                                       "trajectories": {"train": 2, "valid": 1, "test": 1}}, progress=None)
    r = resolve_target("system:lorenz63", data_dir=data)
    assert isinstance(r, ResolvedTarget) and r.dt == pytest.approx(0.05) and r.norm_scale.shape == (3,)
    new = DivergenceRegularizer(r, field="flow_map")
    with pytest.warns(DeprecationWarning, match="resolve_target"):
        old = DivergenceRegularizer("system:lorenz63", field="flow_map", data_dir=data)
    x = torch.randn(16, 3, dtype=torch.float64)
    torch.testing.assert_close(new.target(x), old.target(x))
    torch.testing.assert_close(new.target(x), torch.full((16,), LORENZ_DIV, dtype=torch.float64))
    assert new.dt == old.dt == r.dt
    with pytest.raises(ValueError, match="carries its data facts"):
        DivergenceRegularizer(r, data_dir=data)
    est = resolve_target("data", data_dir=data)
    assert est.data_estimate is not None and "estimated from data" in est.description
    # sns-train resolves a term's target in the entry point: no data read by the term, no warning
    import warnings

    from omegaconf import OmegaConf

    from sns.cli.train import _loss_term

    c = OmegaConf.create({"_target_": "sns.losses.DivergenceRegularizer", "target": "system:lorenz63",
                          "data_dir": str(data), "field": "flow_map", "weight": 1e-3})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        term = _loss_term(c)
    assert term.dt == r.dt and torch.equal(term.norm_scale, r.norm_scale) and term.schedule(10**6) == 1e-3
    torch.testing.assert_close(term.target(x), new.target(x))
