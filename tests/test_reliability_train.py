"""sns-train reliability (issue 16): an idempotent EMA export, raw weights kept in checkpoints,
weights-only checkpoint loads with clear errors, atomic checkpoint commits, and a fallback when
last.ckpt is damaged."""

import fractions
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sns.data.generate import generate_dataset
from sns.export import read_metadata

SMALL = {"n_frames": 40, "spinup_steps": 50, "trajectories": {"train": 2, "valid": 2, "test": 2}}
FAST = ["experiment=lorenz63_cpu", "trainer.max_epochs=2", "trainer.limit_train_batches=4", "data.batch_size=16",
        "data.max_val_windows=8", "torch_threads=1", "model.surrogate.val_horizon=5", "~logger",
        "+trainer.enable_model_summary=false"]
KEY = "model.net.net.4.weight"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_dataset("lorenz63", "cpu", out=root / "lorenz63-cpu", overrides=SMALL, progress=None)
    return root


def _train(data_root, run_dir, *extra):
    from hydra import compose, initialize_config_dir

    from sns.cli import CONFIG_PATH
    from sns.cli.train import train

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*FAST, f"paths.data_dir={data_root}", f"paths.run_dir={run_dir}",
                                                      f"paths.output_dir={run_dir}", *extra])
    n = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")
            return train(cfg)
    finally:
        torch.set_num_threads(n)


def _ckpt(run_dir):
    return torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("extra", [[], ["trainer.val_check_interval=2"]], ids=["default", "frequent"])
def test_rerun_of_finished_training_is_idempotent(data_root, tmp_path, extra):
    """Re-running a finished run keeps the exported EMA weights and last.ckpt's raw weights."""
    run = tmp_path / "run"
    _train(data_root, run, *extra)
    export = load_file(run / "surrogate.safetensors")
    meta = read_metadata(run / "surrogate.safetensors")
    ck = _ckpt(run)
    assert not torch.equal(ck["state_dict"][KEY], ck["current_model_state"][KEY])  # raw != EMA
    assert torch.equal(load_file(run / "surrogate.safetensors")["net.net.4.weight"], ck["state_dict"][KEY])
    _train(data_root, run, *extra)  # finished: nothing to train, same artifacts
    again = load_file(run / "surrogate.safetensors")
    assert again.keys() == export.keys() and all(torch.equal(again[k], export[k]) for k in export)
    assert read_metadata(run / "surrogate.safetensors") == meta
    ck2 = _ckpt(run)
    assert ck2["global_step"] == ck["global_step"]
    for part in ("state_dict", "current_model_state"):
        assert torch.equal(ck2[part][KEY], ck[part][KEY]), part


def test_resume_loads_weights_only_and_refuses_pickles(data_root, tmp_path, monkeypatch):
    import lightning.pytorch as pl

    run = tmp_path / "run"
    _train(data_root, run, "trainer.max_epochs=1")
    seen = []
    fit = pl.Trainer.fit

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "fit", spy)
    _train(data_root, run, "trainer.max_epochs=2")
    assert seen[0]["weights_only"] is True and seen[0]["ckpt_path"].endswith("last.ckpt")
    # a checkpoint that pickles an arbitrary object is refused with a clear error
    ck = _ckpt(run)
    ck["hyper_parameters"]["evil"] = fractions.Fraction(1, 3)  # not on the weights-only allow list
    torch.save(ck, run / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match=r"last\.ckpt: refusing to load this checkpoint.*fractions\.Fraction") as err:
        _train(data_root, run, "trainer.max_epochs=3")
    assert "weights_only=False" not in str(err.value)
    from sns.export import export_checkpoint

    with pytest.raises(ValueError, match=r"last\.ckpt: refusing to load"):
        export_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path / "x.safetensors")


def test_checkpoints_are_committed_atomically(tmp_path, monkeypatch):
    from sns.training.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "ck" / "last.ckpt"
    io.save_checkpoint({"a": torch.arange(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.arange(3))
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    io.save_checkpoint({"a": torch.arange(4)}, target)
    assert renames[0][0].parent == target.parent and renames[0][1] == target  # same directory: a true rename
    # a write that dies half-way keeps the old checkpoint and leaves no temporary file
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"a": torch.arange(5)}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.arange(4))
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_damaged_last_ckpt_falls_back_to_newest_readable(data_root, tmp_path):
    run = tmp_path / "run"
    _train(data_root, run)
    ckdir = run / "checkpoints"
    others = [p for p in ckdir.glob("*.ckpt") if p.name != "last.ckpt"]
    assert others
    step = torch.load(others[0], weights_only=True)["global_step"]
    data = (ckdir / "last.ckpt").read_bytes()
    (ckdir / "last.ckpt").write_bytes(data[: len(data) // 2])  # truncated by a crash
    from sns.cli.train import resolve_ckpt_path

    with pytest.warns(RuntimeWarning, match=r"skipped unreadable checkpoint.*last\.ckpt: truncated or corrupt"):
        assert resolve_ckpt_path("last", run) == str(others[0])
    with pytest.warns(RuntimeWarning, match="instead"):
        metrics = _train(data_root, run, "trainer.max_epochs=3")
    assert metrics["global_step"] > step
    assert torch.load(ckdir / "last.ckpt", weights_only=True)["global_step"] == metrics["global_step"]
    # nothing readable: a clear error naming the files, not a raw RuntimeError / EOFError
    for p in ckdir.glob("*.ckpt"):
        p.write_bytes(b"")
    with pytest.raises(ValueError, match=r"no readable checkpoint in .*last\.ckpt: empty file"):
        resolve_ckpt_path("last", run)
    with pytest.raises(ValueError, match=r"last\.ckpt: empty file"):
        resolve_ckpt_path(str(ckdir / "last.ckpt"), run)
