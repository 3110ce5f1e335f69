"""Neural ODE generator (sns.surrogates.neural_ode) and its Lightning module: exact linear flows,
time encoding, fitting, training through sns-train with the divergence term, rollout."""

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from torch import nn

from sns.losses import divergence
from sns.rollout import rollout
from sns.surrogates.neural_ode import NeuralODE, SinusoidalTimeEncoding
from sns.training.neural_ode import NeuralODEModule

A = torch.tensor([[-0.1, 2.0], [-2.0, -0.3]], dtype=torch.float64)  # damped rotation, tr A = -0.4


def linear_node(**kw):
    """A NeuralODE whose field is set to the exact f(x) = A x."""
    model = NeuralODE(2, dt=0.25, rtol=1e-10, atol=1e-12, **kw).double()
    lin = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(A)
    model.net = lin
    return model


def test_exact_field_gives_the_matrix_exponential():
    model = linear_node()
    x0 = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    traj = model.trajectory(x0, 8)
    assert traj.shape == (5, 9, 2)
    for k in range(9):
        ref = x0 @ torch.from_numpy(expm(A.numpy() * 0.25 * k)).T
        torch.testing.assert_close(traj[:, k], ref, rtol=1e-8, atol=1e-9)
    # forward = one saved interval; rollout of the stepper = the same trajectory
    torch.testing.assert_close(model(x0), traj[:, 1], rtol=1e-8, atol=1e-9)
    assert model.last_calls > 0
    res = rollout(model, x0, 8, store=None, store_dtype="float64")
    assert res.status == "completed"
    torch.testing.assert_close(res.states, traj, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(model.generate(x0, 8, chunk=3), traj, rtol=1e-7, atol=1e-8)
    # divergence of the field = tr A; fixed-step rk4 and the adjoint agree with dopri5
    torch.testing.assert_close(divergence(model.vector_field, x0), torch.full((5,), -0.4, dtype=torch.float64))
    rk4 = linear_node(method="rk4", step_size=0.01)
    torch.testing.assert_close(rk4.trajectory(x0, 8), traj, rtol=1e-6, atol=1e-7)
    adj = linear_node(adjoint=True)
    x = x0.clone().requires_grad_(True)
    adj.trajectory(x, 4)[:, -1].sum().backward()
    ref = torch.from_numpy(expm(A.numpy() * 1.0)).sum(0)  # d/dx0 of sum(expm(A t) x0)
    torch.testing.assert_close(x.grad, ref.expand(5, 2), rtol=1e-6, atol=1e-7)


def test_time_encoding_and_errors():
    enc = SinusoidalTimeEncoding(4, time_scale=2.0)
    out = enc(torch.tensor([0.0, 1.0]), 2)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(out[1], torch.tensor([1.0, 0.0, 0.0, -1.0]), atol=1e-6, rtol=0)  # sin(pi/2), sin(pi)
    assert enc(0.5, 3).shape == (3, 4)
    m = NeuralODE(3, hidden=16, depth=2, time_features=4, dt=0.1)
    assert m.net[0].in_features == 7 and sum(isinstance(x, nn.Linear) for x in m.net) == 3
    x = torch.randn(4, 3)
    assert not torch.allclose(m.vector_field(x, 0.0), m.vector_field(x, 0.3))
    assert m.trajectory(x, 2).shape == (4, 3, 3)
    for bad, match in (({"time_features": 3}, "even"), ({"method": "rk45"}, "valid choices"),
                       ({"activation": "relu6"}, "valid choices"), ({"dt": 0.0}, "dt"), ({"depth": 0}, "depth")):
        with pytest.raises(ValueError, match=match):
            NeuralODE(3, **bad)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        m(torch.randn(4, 2))


def test_fits_a_linear_flow_from_trajectories():
    torch.manual_seed(0)
    x0 = torch.randn(64, 2, dtype=torch.float64)
    with torch.no_grad():
        data = linear_node().trajectory(x0, 4).float()
    module = NeuralODEModule({"kind": "neural_ode", "kwargs": {"dim": 2, "hidden": 32, "depth": 2, "dt": 0.25}},
                             optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), unroll_start=4, unroll_max=4)
    module.log = lambda *a, **k: None
    opt = module.configure_optimizers()
    losses = []
    for _ in range(150):
        loss = module.training_step(data, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.02 * losses[0]
    # the learned field's divergence approaches tr A = -0.4 on the data
    div = divergence(module.model.vector_field, data[:, :4].reshape(-1, 2), create_graph=False)
    assert div.mean().item() == pytest.approx(-0.4, abs=0.15)
    # derivative loss: no solve, central differences
    module.loss = "derivative"
    assert module.training_step(data, 0).ndim == 0
    with pytest.raises(ValueError, match="valid choices"):
        NeuralODEModule({"kind": "neural_ode", "kwargs": {"dim": 2}}, loss="adjoint")
    with pytest.raises(ValueError, match="neural_ode kind"):
        NeuralODEModule({"kind": "residual_mlp", "kwargs": {"dim": 2}})


SMALL = {"n_frames": 60, "spinup_steps": 100, "trajectories": {"train": 2, "valid": 1, "test": 1}}


def test_train_through_sns_train_with_the_divergence_term(tmp_path):
    from hydra import compose, initialize_config_dir

    from sns.cli import CONFIG_PATH
    from sns.cli.train import train
    from sns.data.generate import generate_dataset
    from sns.export import load_model

    generate_dataset("lorenz63", "cpu", out=tmp_path / "data" / "lorenz63-cpu", overrides=SMALL, progress=None)
    overrides = ["experiment=node_lorenz63_div", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
                 "data.batch_size=16", "data.max_val_windows=4", "model.neural_ode.val_horizon=4",
                 "model.neural_ode.module.unroll_start=2", "model.neural_ode.module.unroll_max=2",
                 "model.neural_ode.module.net.kwargs.hidden=32", "~logger", f"paths.data_dir={tmp_path}/data",
                 f"paths.run_dir={tmp_path}/run", f"paths.output_dir={tmp_path}/run"]
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    assert cfg.task == "neural_ode"
    n = torch.get_num_threads()
    try:
        metrics = train(cfg)
    finally:
        torch.set_num_threads(n)
    assert metrics["global_step"] == 4
    for key in ("val/loss", "val/rollout_rmse", "val/div_err", "train/div_err", "train/div_weight"):
        assert np.isfinite(metrics[key]), key
    assert metrics["train/div_weight"] == pytest.approx(0.5e-3)  # epoch 1 of start=1, ramp=2, weight 1e-3
    model, extra = load_model(tmp_path / "run" / "neural_ode.safetensors")
    assert extra["task"] == "neural_ode" and extra["dt"] == 0.05 and extra["data"]["system"] == "lorenz63"
    x0 = torch.randn(2, 3)
    res = rollout(model, x0, 5, store=None)
    with torch.no_grad():
        ref = model.trajectory(x0, 5)
    torch.testing.assert_close(res.states, ref, rtol=1e-4, atol=1e-4)  # stepwise vs one integration
