"""SNSRefiner.from_file: a refiner built from an exported denoiser file, its schedule and
normalisation read from the file (issue 17)."""

import pytest
import torch

from sns.export import save_model
from sns.refine import SNSRefiner
from sns.systems.lorenz import Lorenz63
from sns.training import build_model

S = 10
OFFSET = [-0.5, 0.3, 23.5]  # Lorenz-63-like normalisation: x_norm = (x - offset) / scale
SCALE = [7.9, 9.0, 8.6]
MLP = {"kind": "mlp_pair", "kwargs": {"dim": 3, "n_levels": S, "width": 32}}


def denoiser_extra(**data):
    extra = {"task": "denoiser", "method": "sns", "schedule": {"name": "cosine", "n_levels": S, "kwargs": {}}}
    if data:
        extra["data"] = {"system": "lorenz63", **data}
    return extra


def export(tmp_path, spec=MLP, extra=None, name="denoiser.safetensors"):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    with torch.no_grad():  # random weights everywhere, so the level heads read varied levels
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    if extra is None:
        extra = denoiser_extra(norm_offset=OFFSET, norm_scale=SCALE)
    return save_model(model, spec, tmp_path / name, extra)


def test_physical_units_match_normalised_units(tmp_path):
    """The same refined states, whether the surrogate maps physical states (units='physical')
    or normalised ones (units='normalised'), mapped through the file's normalisation."""
    path = export(tmp_path)
    off, sc = torch.tensor(OFFSET), torch.tensor(SCALE)
    lorenz = Lorenz63()
    phys = lambda x: lorenz.step(x.double(), 5).float()  # a surrogate in physical units
    norm = lambda z: (phys(z * sc + off) - off) / sc  # the same surrogate on normalised states
    opts = {"proposal_sigma": 0.3, "clamp": 5.0}
    r_phys = SNSRefiner.from_file(path, phys, units="physical", **opts)
    r_norm = SNSRefiner.from_file(path, norm, units="normalised", **opts)
    assert r_phys.shift.shape == (3,) and torch.allclose(r_phys.shift, off) and torch.allclose(r_phys.scale, sc)
    assert float(r_norm.shift) == 0.0 and float(r_norm.scale) == 1.0
    assert r_phys.schedule.n_levels == S and r_phys.proposal_sigma == 0.3 and r_phys.clamp == 5.0

    g = torch.Generator().manual_seed(3)
    x = lorenz.step(lorenz.initial_condition(64, g), 500).float()  # on the attractor, physical units
    z = (x - off) / sc
    g_phys, g_norm = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    levels = []
    for _ in range(3):  # a short rollout: the same generator seed, the same draws
        x, z = r_phys(x, generator=g_phys), r_norm(z, generator=g_norm)
        assert torch.equal(r_phys.last_levels[0], r_norm.last_levels[0])
        assert torch.equal(r_phys.last_levels[1], r_norm.last_levels[1])
        levels.append(r_phys.last_levels[1])
        torch.testing.assert_close(x, z * sc + off, rtol=1e-4, atol=1e-4)
    assert len(torch.cat(levels).unique()) > 1  # the heads engaged: a real refinement, not one level

    # the mismatch the loader removes: the physical surrogate refined in normalised units is wrong
    r_wrong = SNSRefiner.from_file(path, phys, units="normalised", **opts)
    x0 = lorenz.step(lorenz.initial_condition(64, torch.Generator().manual_seed(3)), 500).float()
    a = r_phys(x0, generator=torch.Generator().manual_seed(7))
    b = r_wrong(x0, generator=torch.Generator().manual_seed(7))
    assert (a - b).abs().max() > 1.0


def test_vector_with_one_pooled_normalisation(tmp_path):
    """A vector system normalised with one offset/scale for all coordinates (Lorenz-96 pools
    them: length-1 lists) broadcasts over the state."""
    spec = {"kind": "mlp_pair", "kwargs": {"dim": 5, "n_levels": S, "width": 16}}
    path = export(tmp_path, spec, denoiser_extra(norm_offset=[2.3], norm_scale=[3.6]))
    r = SNSRefiner.from_file(path, lambda u: u, units="physical", fixed_levels=(0, 0))
    assert r.shift.shape == (1,) and r.scale.shape == (1,)
    y = r(torch.full((4, 5), 2.3), generator=torch.Generator().manual_seed(0))
    assert y.shape == (4, 5) and torch.isfinite(y).all()


def test_field_normalisation_is_per_channel(tmp_path):
    spec = {"kind": "blind_pair_unet", "preset": "tiny"}
    extra = denoiser_extra(norm_offset=[0.0], norm_scale=[4.44])
    extra["schedule"]["n_levels"] = build_model(spec).n_levels
    path = export(tmp_path, spec, extra)
    r = SNSRefiner.from_file(path, lambda u: 0.9 * u, units="physical", fixed_levels=(0, 0))
    state = tuple(r.denoiser.state_shape)
    assert r.shift.shape == (1, 1, 1) and r.scale.shape == (1, 1, 1) and float(r.scale.flatten()[0]) == pytest.approx(4.44)
    y = r(torch.randn(2, *state), generator=torch.Generator().manual_seed(0))
    assert y.shape == (2, *state) and torch.isfinite(y).all()


def test_from_file_refuses_bad_files_and_units(tmp_path):
    good = export(tmp_path)
    with pytest.raises(ValueError, match=r"units must be one of \('normalised', 'physical'\), got 'metres'"):
        SNSRefiner.from_file(good, lambda u: u, units="metres")
    with pytest.raises(TypeError, match="from_file sets scale, shift itself"):
        SNSRefiner.from_file(good, lambda u: u, shift=1.0, scale=2.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        SNSRefiner.from_file(good, lambda u: u, units="normalised", colour="red")

    surrogate_spec = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 16}}
    sur = save_model(build_model(surrogate_spec), surrogate_spec, tmp_path / "surrogate.safetensors",
                     {"task": "surrogate", "data": {"norm_offset": OFFSET, "norm_scale": SCALE}})
    with pytest.raises(ValueError, match=r"surrogate\.safetensors holds a model with task='surrogate'.*"
                                         r"needs an SNS pair denoiser"):
        SNSRefiner.from_file(sur)
    acdm = export(tmp_path, extra={**denoiser_extra(norm_offset=OFFSET, norm_scale=SCALE), "method": "acdm"},
                  name="acdm.safetensors")
    with pytest.raises(ValueError, match=r"acdm\.safetensors holds a model with task='denoiser', method='acdm'"):
        SNSRefiner.from_file(acdm, lambda u: u, units="normalised")

    bare = export(tmp_path, extra=denoiser_extra(), name="bare.safetensors")  # no normalisation recorded
    r = SNSRefiner.from_file(bare, lambda u: u, units="normalised")  # normalised units need none
    assert float(r.shift) == 0.0 and float(r.scale) == 1.0
    with pytest.raises(ValueError, match=r"bare\.safetensors records no data normalisation \(norm_offset and "
                                         r"norm_scale missing.*units='physical' cannot be honoured"):
        SNSRefiner.from_file(bare, lambda u: u, units="physical")
    two = export(tmp_path, extra=denoiser_extra(norm_offset=[0.0, 1.0], norm_scale=SCALE), name="two.safetensors")
    with pytest.raises(ValueError, match=r"two\.safetensors: norm_offset has 2 entries .* expected 1 or 3"):
        SNSRefiner.from_file(two, lambda u: u, units="physical")
    neg = export(tmp_path, extra=denoiser_extra(norm_offset=OFFSET, norm_scale=[1.0, -1.0, 1.0]), name="neg.safetensors")
    with pytest.raises(ValueError, match="norm_scale must be positive"):
        SNSRefiner.from_file(neg, lambda u: u, units="physical")
    with pytest.raises(FileNotFoundError):
        SNSRefiner.from_file(tmp_path / "missing.safetensors")


def test_from_a_file_written_by_sns_train(tmp_path):
    """The normalisation sns-train records (``extra["data"]``) is the data set's: physical frames
    refined through the file give the normalised frames (as WindowDataset serves them) refined
    in normalised units."""
    import zarr
    from hydra import compose, initialize_config_dir

    from sns.cli import CONFIG_PATH
    from sns.cli.train import train
    from sns.data.generate import generate_dataset
    from sns.data.windows import WindowDataset

    small = {"n_frames": 40, "spinup_steps": 100, "trajectories": {"train": 2, "valid": 1, "test": 1}}
    data = generate_dataset("lorenz63", "cpu", out=tmp_path / "lorenz63-cpu", overrides=small, progress=None)
    fast = ["experiment=lorenz63_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.batch_size=32",
            "data.max_val_windows=8", "torch_threads=1", "task=denoiser", "diffusion.n_levels=10",
            f"paths.data_dir={tmp_path}", f"paths.run_dir={tmp_path}/den", f"paths.output_dir={tmp_path}/den"]
    n = torch.get_num_threads()
    try:
        with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
            train(compose(config_name="train", overrides=fast))
    finally:
        torch.set_num_threads(n)
    path = tmp_path / "den" / "denoiser.safetensors"
    ds = WindowDataset(data / "valid.zarr", history=1, horizon=1, stride=1)
    attrs = dict(zarr.open_group(str(data / "valid.zarr"), mode="r").attrs)
    r_phys = SNSRefiner.from_file(path, lambda u: u, units="physical", proposal_sigma=0.2, clamp=3.0)
    r_norm = SNSRefiner.from_file(path, lambda u: u, units="normalised", proposal_sigma=0.2, clamp=3.0)
    torch.testing.assert_close(r_phys.shift, torch.tensor(attrs["norm_offset"], dtype=torch.float32))
    torch.testing.assert_close(r_phys.scale, torch.tensor(attrs["norm_scale"], dtype=torch.float32))
    z = torch.stack([ds[i][0] for i in range(0, len(ds), 5)])  # normalised frames
    x = ds.denormalise(z)  # the same frames in physical units
    y_phys = r_phys(x, generator=torch.Generator().manual_seed(0))
    y_norm = r_norm(z, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(y_phys, ds.denormalise(y_norm), rtol=1e-4, atol=1e-4)
