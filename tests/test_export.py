"""Export to safetensors and reload from the file alone: identical outputs."""

import json
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from sns.export import export_checkpoint, load_model, load_schedule, read_metadata, save_model
from sns.training import SurrogateModule, build_model

SPECS = [
    ({"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 16}}, (3,)),
    ({"kind": "residual_unet", "preset": "tiny"}, (1, 16, 16)),
    ({"kind": "blind_pair_unet", "preset": "tiny"}, (1, 16, 16)),
    ({"kind": "explicit_pair_unet", "preset": "tiny"}, (1, 16, 16)),
    ({"kind": "mlp_pair", "kwargs": {"dim": 3, "n_levels": 10, "width": 16}}, (3,)),
]


def outputs(model, x):
    with torch.no_grad():
        if hasattr(model, "n_levels"):
            s = torch.arange(x.shape[0]) % model.n_levels
            o = model(x, 0.5 * x, i2=s, i1=s.flip(0))
            return [o.eps_prev, o.eps_next, o.logits_i2, o.logits_i1]
        return [model(x)]


@pytest.mark.parametrize("spec,shape", SPECS, ids=[s["kind"] for s, _ in SPECS])
def test_round_trip_is_exact(spec, shape, tmp_path):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    with torch.no_grad():  # random weights everywhere (the residual output layer starts at zero)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = save_model(model, spec, tmp_path / "m.safetensors", {"task": "x", "norm_scale": [4.44]})
    loaded, extra = load_model(path)
    assert extra == {"task": "x", "norm_scale": [4.44]}
    assert not loaded.training
    x = torch.randn(3, *shape)
    for a, b in zip(outputs(model, x), outputs(loaded, x)):
        assert torch.equal(a, b)
    spec_stored, _ = read_metadata(path)
    json.dumps(spec_stored)
    assert spec_stored["kind"] == spec["kind"] and "preset" not in spec_stored  # resolved: self-contained
    assert not list(tmp_path.glob("*.tmp"))  # atomic write


def test_foreign_file_is_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not an sns model file"):
        read_metadata(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="no schedule"):
        load_schedule({"task": "surrogate"})


def test_export_checkpoint_holds_ema_weights(tmp_path):
    """A Lightning checkpoint (read with weights_only=True) exports the EMA weights."""
    torch.manual_seed(0)
    windows = torch.randn(64, 3, 3)
    module = SurrogateModule({"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 16}}, unroll_max=2,
                             val_rollout_steps=0, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    ema = EMAWeightAveraging(decay=0.5)
    trainer = pl.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[ema])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(windows, batch_size=8))
    ckpt = tmp_path / "c.ckpt"
    trainer.save_checkpoint(ckpt)
    path = export_checkpoint(ckpt, tmp_path / "s.safetensors", {"data": {"system": "lorenz63"}})
    loaded, extra = load_model(path)
    assert extra["task"] == "surrogate" and extra["data"] == {"system": "lorenz63"}
    avg = ema._average_model.module.model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, avg[k]), k
    # EMA really averaged: the exported weights are not the initial ones
    init = SurrogateModule({"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 16}}).model.state_dict()
    assert not torch.equal(init["net.net.4.weight"], loaded.state_dict()["net.net.4.weight"])


def test_saves_of_the_same_weights_are_the_same_bytes(tmp_path):
    """safetensors writes its header from hash maps; save_model sorts it, so the file's SHA-256
    (the rollout run identity) depends only on the weights and metadata."""
    from sns.export import file_sha256

    spec = {"kind": "mlp_pair", "kwargs": {"dim": 3, "n_levels": 10, "width": 16}}
    torch.manual_seed(0)
    model = build_model(spec).eval()
    extra = {"task": "denoiser", "norm_scale": [4.44], "norm_offset": [0.0], "schedule": {"kind": "cosine"}}
    hashes = {file_sha256(save_model(model, spec, tmp_path / f"m{i}.safetensors", extra)) for i in range(6)}
    assert len(hashes) == 1
    loaded, got = load_model(tmp_path / "m0.safetensors")
    assert got == extra
    x = torch.randn(2, 3)
    for a, b in zip(outputs(model, x), outputs(loaded, x)):
        assert torch.equal(a, b)


def test_inference_imports_no_lightning():
    """Loading a model and refining with it (sns.export, sns.refine, sns.rollout, the surrogate
    loader) never imports Lightning: the model specs live in sns.models, not sns.training."""
    import subprocess
    import sys

    code = ("import sys, sns, sns.export, sns.refine, sns.rollout, sns.surrogates.loading, sns.models\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
            "assert not bad, bad[:5]\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
