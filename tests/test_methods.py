"""The method registry (sns.methods, issue 15): one entry per method, used by sns-train's export,
sns-rollout and SNSRefiner.from_file; a new method is one entry and one module."""

import importlib
import textwrap
from pathlib import Path

import pytest
import torch
from _hydra import compose as compose_config
from omegaconf import OmegaConf

from sns.data.generate import generate_dataset
from sns.diffusion.loss import LEVEL_SAMPLING
from sns.export import save_model
from sns.methods import (
    METHODS,
    Method,
    build_stepper,
    get_method,
    method_for_levels,
    method_of,
    register,
)
from sns.training import build_model

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL = {"n_frames": 40, "spinup_steps": 100, "trajectories": {"train": 2, "valid": 1, "test": 1}}
S = 8


def compose(overrides):
    return compose_config("rollout", overrides)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    data = generate_dataset("lorenz63", "cpu", out=root / "lorenz63-cpu", overrides=SMALL, progress=None)
    torch.manual_seed(0)
    sur_spec = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 16, "n_layers": 2}}
    den_spec = {"kind": "mlp_pair", "kwargs": {"dim": 3, "n_levels": S, "width": 32}}
    sched = {"name": "cosine", "n_levels": S, "kwargs": {}}
    out = {"root": root, "data": data}
    out["sur"] = save_model(build_model(sur_spec).eval(), sur_spec, root / "sur.safetensors", {"task": "surrogate"})
    for method in ("sns", "thermalizer"):
        out[method] = save_model(build_model(den_spec).eval(), den_spec, root / f"{method}.safetensors",
                                 {"task": "denoiser", "method": method, "schedule": sched})
    out["old"] = save_model(build_model(den_spec).eval(), den_spec, root / "old.safetensors",  # no method recorded
                            {"task": "denoiser", "schedule": sched})
    return out


def test_every_entry_resolves_and_matches_the_configs():
    rollout_cfg = OmegaConf.load(CONF / "rollout.yaml")
    model_tasks = set()
    for f in (CONF / "model").glob("*.yaml"):
        cfg = OmegaConf.to_container(OmegaConf.load(f), resolve=False) or {}
        model_tasks |= {k for k, v in cfg.items() if isinstance(v, dict) and "module" in v}
    for m in METHODS.values():
        module, _, fn = m.builder.partition(":")
        assert callable(getattr(importlib.import_module(module), fn)), m.name
        assert m.train_task in model_tasks, f"{m.name}: no conf/model file has task {m.train_task!r}"
        if m.name != "pde_refiner":  # its options are fixed by training (the file records them)
            assert m.settings in rollout_cfg, f"{m.name}: conf/rollout.yaml has no {m.settings!r} section"
    # every level sampling of the loss is one method, and back
    assert {method_for_levels(lv) for lv in LEVEL_SAMPLING} == {"sns", "acdm", "thermalizer"}
    assert {get_method(method_for_levels(lv)).levels for lv in LEVEL_SAMPLING} == set(LEVEL_SAMPLING)


def test_method_of_reads_the_file_and_refuses_unknowns():
    assert method_of({"task": "denoiser"}).name == "sns"  # files written before the baselines existed
    assert method_of({"task": "denoiser", "method": "acdm"}).name == "acdm"
    assert method_of({"task": "surrogate"}).name == "surrogate"
    assert method_of({"task": "neural_ode"}).name == "neural_ode"
    with pytest.raises(ValueError, match="unknown method 'ddim'.*valid choices"):
        method_of({"task": "denoiser", "method": "ddim"})
    with pytest.raises(ValueError, match="records task 'gan'"):
        method_of({"task": "gan"})
    with pytest.raises(ValueError, match="no method trains with levels 'random'"):
        method_for_levels("random")
    with pytest.raises(ValueError, match="already registered"):
        register(METHODS["sns"])
    with pytest.raises(ValueError, match="package.module:function"):
        register(Method("x", "x", "surrogate", True, "x", "nocolon"))


def test_build_stepper_refuses_the_wrong_file_and_surrogate(files):
    from sns.export import load_model

    den, extra = load_model(files["thermalizer"])
    sur, _ = load_model(files["sur"])
    with pytest.raises(ValueError, match="needs a model trained for 'sns'.*holds 'thermalizer'"):
        build_stepper("sns", den, extra, sur)
    with pytest.raises(ValueError, match="refines a surrogate"):
        build_stepper("thermalizer", den, extra, None)
    step, recorded = build_stepper("thermalizer", den, extra, sur, {"start": 2, "stop": 1})
    assert (step.start, step.stop, recorded["limit"]) == (2, 1, 100)  # defaults where silent
    with pytest.raises(ValueError, match="unknown thermalizer option"):
        build_stepper("thermalizer", den, extra, sur, {"begin": 2})
    den, extra = load_model(files["sns"])
    with pytest.raises(ValueError, match="uses no surrogate"):
        build_stepper("clean_conditioning", den, extra, sur)
    with pytest.raises(ValueError, match="unknown refiner option"):
        build_stepper("sns", den, extra, sur, {"levels": 3})


def test_clean_conditioning_through_sns_rollout(files, tmp_path):
    from sns.cli.rollout import run_rollout
    from sns.rollout import open_rollout

    base = [f"data_dir={files['data']}", "n_steps=3", "trajectories=1", "surrogate=null"]
    run_rollout(compose([*base, f"denoiser={files['sns']}", "method=clean_conditioning",
                         "clean_conditioning.clamp=3.0", f"out={tmp_path}/cc.zarr"]))
    store = open_rollout(tmp_path / "cc.zarr")
    assert store.attrs["method"] == "clean_conditioning"
    assert store.attrs["clean_conditioning"] == {"clamp": 3.0, "n_moves": None, "eta": 1.0}
    calls = store["calls"].values  # step 0 is the initial condition
    assert calls.shape == (1, 4) and (calls[:, 1:] == S + 1).all(), calls  # x_t from the top: S unit moves, + 1 for the level-0 x_{t-1}
    # old files (no method recorded) are SNS files too; a thermalizer file is refused, naming both
    run_rollout(compose([*base, f"denoiser={files['old']}", "method=clean_conditioning", f"out={tmp_path}/old.zarr"]))
    with pytest.raises(ValueError, match="needs a model trained for 'sns'.*holds 'thermalizer'"):
        run_rollout(compose([*base, f"denoiser={files['thermalizer']}", "method=clean_conditioning",
                             f"out={tmp_path}/bad.zarr"]))
    assert not (tmp_path / "bad.zarr").exists()


def test_a_neural_ode_export_rolls_out_as_a_surrogate(files, tmp_path):
    from sns.cli.rollout import run_rollout
    from sns.rollout import open_rollout

    spec = {"kind": "neural_ode", "kwargs": {"dim": 3, "hidden": 16, "depth": 2, "dt": 0.05, "method": "rk4"}}
    model = build_model(spec).eval()
    path = save_model(model, spec, files["root"] / "node.safetensors", {"task": "neural_ode", "dt": 0.05})
    run_rollout(compose([f"data_dir={files['data']}", "n_steps=4", "trajectories=1", f"surrogate={path}",
                         f"out={tmp_path}/node.zarr"]))
    store = open_rollout(tmp_path / "node.zarr")
    assert store.attrs["method"] == "neural_ode"  # the file's method, not the generic surrogate
    x = torch.from_numpy(store["state"].values[0]).float()  # (T + 1, 3)
    with torch.no_grad():
        ref = model.trajectory(x[:1], 4)[0]
    torch.testing.assert_close(x, ref, rtol=1e-4, atol=1e-5)
    # a task=surrogate export alone is still the method "surrogate" (its stores resume as before)
    run_rollout(compose([f"data_dir={files['data']}", "n_steps=2", "trajectories=1", f"surrogate={files['sur']}",
                         f"out={tmp_path}/sur.zarr"]))
    assert open_rollout(tmp_path / "sur.zarr").attrs["method"] == "surrogate"


def test_a_new_method_is_one_entry_and_one_module(files, tmp_path, monkeypatch):
    """A user's method: a module with a builder, one registered entry; sns-rollout runs it by
    name with its own options and records them, with no edit anywhere else."""
    from sns.cli.rollout import run_rollout
    from sns.export import load_model
    from sns.rollout import open_rollout

    (tmp_path / "damped_method.py").write_text(textwrap.dedent('''
        import torch

        class Damped(torch.nn.Module):
            def __init__(self, surrogate, factor):
                super().__init__()
                self.surrogate, self.factor, self.last_calls = surrogate, factor, None

            def forward(self, x, generator=None):
                self.last_calls = 1
                return x + self.factor * (self.surrogate(x) - x)

        def build(model, extra, surrogate, settings, context):
            recorded = {"factor": float(settings.get("factor", 1.0))}
            return Damped(surrogate, recorded["factor"]), recorded
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(METHODS, "damped", Method("damped", "a damped surrogate step", train_task="surrogate",
                                                  refines=True, settings="damped", builder="damped_method:build",
                                                  needs_model=False))
    run_rollout(compose([f"data_dir={files['data']}", "n_steps=3", "trajectories=1", f"surrogate={files['sur']}",
                         "method=damped", "+damped.factor=0.5", f"out={tmp_path}/damped.zarr"]))
    store = open_rollout(tmp_path / "damped.zarr")
    assert store.attrs["method"] == "damped" and store.attrs["damped"] == {"factor": 0.5}
    sur, _ = load_model(files["sur"])
    x = torch.from_numpy(store["state"].values[0]).float()
    with torch.no_grad():
        torch.testing.assert_close(x[1], x[0] + 0.5 * (sur(x[:1])[0] - x[0]), rtol=1e-5, atol=1e-6)
