"""Bring your own model (issue 17): surrogates from import paths, TorchScript and torch.export
files, with declared units; a unit mismatch is an error; a physical-units surrogate rolled out by
sns-rollout gives the states of the Python API."""

import sys
import textwrap

import numpy as np
import pytest
import torch

from sns.export import save_model
from sns.refine import SNSRefiner
from sns.surrogates.loading import NormalisedView, load_surrogate, norm_tensors
from sns.training import build_model

USER_MODULE = textwrap.dedent('''
    """A user's own models, nothing of sns in them."""
    import torch
    from torch import nn

    from sns.systems.lorenz import Lorenz63


    class Damped(nn.Module):
        def __init__(self, factor=0.9):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return self.factor * x


    class Declared(Damped):
        units = "physical"


    class LorenzStep(nn.Module):
        """Five exact solver steps of dt 0.01, in physical units."""
        units = "physical"

        def __init__(self):
            super().__init__()
            self.system = Lorenz63()

        def forward(self, x):
            return self.system.step(x.double(), 5).to(x.dtype)


    def make(factor=0.5):
        return Damped(factor)


    def make_function():
        return lambda x: x + 1.0


    MODEL = Damped(0.8)
    NOT_A_MODEL = 3
    def make_nothing():
        return 3
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_models_sns_test.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_models_sns_test"
    sys.modules.pop("user_models_sns_test", None)


def test_import_paths(user_module):
    x = torch.randn(4, 3)
    inst = load_surrogate(f"{user_module}:MODEL", units="physical")
    assert inst.kind == "import" and inst.units == "physical" and inst.sha256 is not None
    torch.testing.assert_close(inst.model(x), 0.8 * x)
    cls = load_surrogate(f"{user_module}:Damped", units="normalised", kwargs={"factor": 0.3})
    torch.testing.assert_close(cls.model(x), 0.3 * x)
    fac = load_surrogate(f"{user_module}:make", units="normalised")
    torch.testing.assert_close(fac.model(x), 0.5 * x)
    fn = load_surrogate(f"{user_module}:make_function", units="normalised")
    torch.testing.assert_close(fn.model(x), x + 1)
    declared = load_surrogate(f"{user_module}:Declared")  # units from the model's own attribute
    assert declared.units == "physical"


def test_import_path_errors(user_module):
    with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
        load_surrogate("no_such_module_xyz:make", units="physical")
    with pytest.raises(ValueError, match=f"module '{user_module}' has no attribute 'nothere'"):
        load_surrogate(f"{user_module}:nothere", units="physical")
    with pytest.raises(ValueError, match="is a int: expected an nn.Module"):
        load_surrogate(f"{user_module}:NOT_A_MODEL", units="physical")
    with pytest.raises(ValueError, match="returned a int, not a stepper"):
        load_surrogate(f"{user_module}:make_nothing", units="physical")
    with pytest.raises(ValueError, match=r"called as a factory with kwargs \{'colour': 1\} and failed"):
        load_surrogate(f"{user_module}:make", units="physical", kwargs={"colour": 1})
    with pytest.raises(ValueError, match="is a module instance; kwargs"):
        load_surrogate(f"{user_module}:MODEL", units="physical", kwargs={"factor": 1})
    with pytest.raises(ValueError, match="model file just_a_name does not exist .*or an import path package.module:name"):
        load_surrogate("just_a_name")


def test_units_are_declared_never_guessed(user_module, tmp_path):
    with pytest.raises(ValueError, match=r"does not say which units it maps: declare them .*'normalised', 'physical'"):
        load_surrogate(f"{user_module}:MODEL")
    with pytest.raises(ValueError, match=r"units must be one of \('normalised', 'physical'\), got 'metres'"):
        load_surrogate(f"{user_module}:MODEL", units="metres")
    with pytest.raises(ValueError, match="unit mismatch: surrogate .*:Declared maps physical states but units='normalised'"):
        load_surrogate(f"{user_module}:Declared", units="normalised")
    spec = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 16}}
    sur = save_model(build_model(spec), spec, tmp_path / "surrogate.safetensors", {"task": "surrogate"})
    assert load_surrogate(sur).units == "normalised" and load_surrogate(sur).kind == "sns"
    with pytest.raises(ValueError, match=r"unit mismatch: surrogate .*surrogate\.safetensors maps normalised"):
        load_surrogate(sur, units="physical")
    with pytest.raises(ValueError, match=r"model file .*nothere\.safetensors does not exist"):
        load_surrogate(tmp_path / "nothere.safetensors")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown format '.npz'"):
        load_surrogate(tmp_path / "weights.npz", units="physical")
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="junk.pt is not a TorchScript file"):
        load_surrogate(tmp_path / "junk.pt", units="physical")
    (tmp_path / "junk.pt2").write_bytes(b"not a program")
    with pytest.raises(ValueError, match="junk.pt2 is not a torch.export program"):
        load_surrogate(tmp_path / "junk.pt2", units="physical")


class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        return x + 0.1 * torch.tanh(self.lin(x))


def test_torchscript_and_torch_export_files(tmp_path):
    torch.manual_seed(0)
    model = Affine().eval()
    x = torch.randn(4, 3)
    torch.jit.script(model).save(str(tmp_path / "model.pt"))
    ts = load_surrogate(tmp_path / "model.pt", units="normalised")
    assert ts.kind == "torchscript"
    torch.testing.assert_close(ts.model(x), model(x))
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(tmp_path / "model.pt2"))
    ex = load_surrogate(tmp_path / "model.pt2", units="physical")
    assert ex.kind == "torch.export" and ex.units == "physical"
    torch.testing.assert_close(ex.model(x), model(x))
    torch.testing.assert_close(ex.model(x[:3]), model(x[:3]))  # the batch dimension is dynamic


def test_normalised_view_and_norm_tensors():
    off, sc = norm_tensors([1.0, 2.0, 3.0], [2.0, 4.0, 8.0], (3,), "test")
    assert off.shape == (3,) and sc.shape == (3,)
    f_off, f_sc = norm_tensors([1.0, 2.0], 3.0, (2, 5, 5), "test")
    assert f_off.shape == (2, 1, 1) and f_sc.shape == (1, 1, 1)
    view = NormalisedView(lambda x: 2 * x, off, sc)
    z = torch.randn(5, 3)
    torch.testing.assert_close(view(z), (2 * (z * sc + off) - off) / sc)
    assert view.units == "normalised" and not view.counts_calls
    with pytest.raises(ValueError, match=r"test: norm_scale must be positive"):
        norm_tensors(0.0, [1.0, -1.0, 1.0], (3,), "test")
    with pytest.raises(ValueError, match=r"test records no norm_offset"):
        norm_tensors(None, 1.0, (3,), "test")
    with pytest.raises(ValueError, match="the physical-units surrogate must return a tensor of the state's shape"):
        NormalisedView(lambda x: x[:, :2], off, sc)(z)


def test_from_file_takes_a_surrogate_file_and_checks_its_data(tmp_path):
    S = 10
    den_spec = {"kind": "mlp_pair", "kwargs": {"dim": 3, "n_levels": S, "width": 16}}
    data = {"system": "lorenz63", "norm_offset": [0.0, 0.0, 20.0], "norm_scale": [8.0, 9.0, 8.0]}
    den = save_model(build_model(den_spec), den_spec, tmp_path / "denoiser.safetensors",
                     {"task": "denoiser", "method": "sns", "data": data,
                      "schedule": {"name": "cosine", "n_levels": S, "kwargs": {}}})
    spec = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 16}}
    same = save_model(build_model(spec), spec, tmp_path / "same.safetensors", {"task": "surrogate", "data": data})
    r = SNSRefiner.from_file(den, same, fixed_levels=(0, 0))  # units from the file: normalised
    assert float(r.scale) == 1.0
    other = save_model(build_model(spec), spec, tmp_path / "other.safetensors",
                       {"task": "surrogate", "data": {**data, "norm_scale": [1.0, 1.0, 1.0]}})
    with pytest.raises(ValueError, match=r"other\.safetensors was trained on data with norm_scale=\[1\.0, 1\.0, 1\.0\] "
                                         r"but denoiser .* on norm_scale=\[8\.0, 9\.0, 8\.0\]"):
        SNSRefiner.from_file(den, other)
    with pytest.raises(ValueError, match=r"unit mismatch: .*same\.safetensors maps normalised states but units='physical'"):
        SNSRefiner.from_file(den, same, units="physical")
    with pytest.raises(ValueError, match="does not say which units it maps"):
        SNSRefiner.from_file(den, lambda u: u)


def test_cli_physical_surrogate_matches_the_python_api(user_module, tmp_path):
    """sns-rollout surrogate=<import path> surrogate_units=physical with an sns denoiser: the store's
    states (normalised) are the Python API's refined physical states, normalised."""
    from hydra import compose, initialize_config_dir

    from sns.cli import CONFIG_PATH
    from sns.cli.rollout import run_rollout
    from sns.data.generate import generate_dataset
    from sns.data.io import check_store
    from sns.data.windows import WindowDataset
    from sns.rollout import open_rollout, rollout

    small = {"n_frames": 20, "spinup_steps": 100, "trajectories": {"train": 2, "valid": 1, "test": 2}}
    data = generate_dataset("lorenz63", "cpu", out=tmp_path / "lorenz63-cpu", overrides=small, progress=None)
    attrs = check_store(data / "test.zarr")
    S = 10
    den_spec = {"kind": "mlp_pair", "kwargs": {"dim": 3, "n_levels": S, "width": 32}}
    torch.manual_seed(0)
    den = save_model(build_model(den_spec), den_spec, tmp_path / "denoiser.safetensors",
                     {"task": "denoiser", "method": "sns", "schedule": {"name": "cosine", "n_levels": S, "kwargs": {}},
                      "data": {k: attrs[k] for k in ("system", "norm_offset", "norm_scale")}})
    out = tmp_path / "cli.zarr"
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(config_name="rollout", overrides=[
            f"surrogate={user_module}:LorenzStep", "surrogate_units=physical", f"denoiser={den}",
            f"data_dir={data}", "n_steps=6", "trajectories=2", "refiner.proposal_sigma=0.05", "refiner.n_moves=2",
            "refiner.clamp=4.0", f"out={out}", "seed=3"])
        run_rollout(cfg)
    store = open_rollout(out)
    assert store.attrs["rollout_status"] == "completed" and store.attrs["surrogate_units"] == "physical"
    assert store.attrs["surrogate_kind"] == "import"
    z_cli = store["state"].values  # (2, 7, 3), normalised

    ds = WindowDataset(data / "test.zarr", history=1, horizon=1, stride=1)
    x0 = ds.denormalise(torch.stack([ds[k * ds.per_traj][0] for k in range(2)]))
    refiner = SNSRefiner.from_file(den, f"{user_module}:LorenzStep", units="physical", proposal_sigma=0.05,
                                   n_moves=2, clamp=4.0)
    res = rollout(refiner, x0, 6, seed=3)
    x_cli = ds.denormalise(torch.from_numpy(z_cli))
    # (measured: 4e-6, float32 rounding of the normalisation round trip)
    np.testing.assert_allclose(x_cli.numpy(), res.states.numpy(), rtol=1e-5, atol=1e-4)
    assert (store["calls"].values[:, 1:] >= 1).all()
    assert float(np.abs(z_cli[:, 1:] - z_cli[:, :-1]).max()) > 1e-3  # it moved

    # the CLI refuses what it cannot honour: an sns surrogate declared physical
    spec = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 16}}
    sur = save_model(build_model(spec), spec, tmp_path / "surrogate.safetensors",
                     {"task": "surrogate", "data": {k: attrs[k] for k in ("system", "norm_offset", "norm_scale")}})
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(config_name="rollout", overrides=[f"surrogate={sur}", "surrogate_units=physical",
                                                        f"data_dir={data}", "n_steps=2", f"out={tmp_path}/x.zarr"])
        with pytest.raises(ValueError, match="unit mismatch"):
            run_rollout(cfg)
        cfg = compose(config_name="rollout", overrides=[f"surrogate={user_module}:make", f"data_dir={data}",
                                                        "n_steps=2", f"out={tmp_path}/y.zarr"])
        with pytest.raises(ValueError, match="declare them"):
            run_rollout(cfg)
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()
