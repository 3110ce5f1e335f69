"""sns-train reliability (issue 16): an idempotent EMA export, raw weights kept in checkpoints,
weights-only checkpoint loads with clear errors, atomic checkpoint commits, a fallback when
last.ckpt is damaged, and exact resumes (same steps, batches, random numbers, weights and one
CSV log as an uninterrupted run; batches independent of num_workers)."""

import fractions
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
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


def _train(data_root, run_dir, *extra, callbacks=(), base=FAST):
    """sns-train in-process; ``callbacks`` are added to the configured ones."""
    from hydra import compose, initialize_config_dir

    import sns.cli.train as cli
    from sns.cli import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*base, f"paths.data_dir={data_root}", f"paths.run_dir={run_dir}",
                                                      f"paths.output_dir={run_dir}", *extra])
    n = torch.get_num_threads()
    instantiate_group = cli._instantiate_group

    def with_extra(group, what):
        made = instantiate_group(group, what)
        return [*made, *callbacks] if what == "callbacks" else made

    cli._instantiate_group = with_extra
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")
            return cli.train(cfg)
    finally:
        cli._instantiate_group = instantiate_group
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


# ----------------------------------------------------------------------------- exact resume
# 3 epochs x 4 batches (FAST: limit_train_batches=4), by epochs or by steps
EPOCHS, STEPS = ["trainer.max_epochs=3"], ["trainer.max_epochs=-1", "trainer.max_steps=12"]
LOGGED = [a for a in FAST if a != "~logger"] + ["trainer.log_every_n_steps=1"]


class Killed(RuntimeError):
    """A simulated kill (raised from a callback, as a crash or a preemption would stop the run)."""


class Record(pl.Callback):
    """Records (global step, epoch, batch index, batch checksum) of every training batch; raises
    :class:`Killed` after the step ``kill_at``."""

    def __init__(self, kill_at=None):
        self.kill_at, self.batches = kill_at, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        epoch = trainer.fit_loop.epoch_progress.current.processed
        self.batches.append((trainer.global_step, epoch, batch_idx, float(batch.double().sum())))

    def on_train_batch_end(self, trainer, *args):
        if self.kill_at is not None and trainer.global_step >= self.kill_at:
            raise Killed(f"killed after step {trainer.global_step}")


def _run(data_root, run_dir, *extra, kill_at=None, base=FAST):
    """Train; returns (the recorded batches, metrics or None when killed)."""
    rec = Record(kill_at)
    try:
        metrics = _train(data_root, run_dir, *extra, callbacks=[rec], base=base)
    except Killed:
        metrics = None
    return rec.batches, metrics


def _where(batches):
    """(global step, epoch, batch index) of each batch, without the data."""
    return [b[:3] for b in batches]


def _weights(run_dir):
    return load_file(Path(run_dir) / "surrogate.safetensors")


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _csv(run_dir):
    import csv

    files = sorted(Path(run_dir).glob("csv/*/metrics.csv"))
    rows = []
    for f in files:
        with open(f, newline="") as fh:
            rows.append(list(csv.DictReader(fh)))
    return files, rows


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """Uninterrupted runs, once per setting."""
    done = {}

    def get(*extra, base=FAST):
        key = (*base, *extra)
        if key not in done:
            run = tmp_path_factory.mktemp("ref")
            batches, metrics = _run(data_root, run, *extra, base=base)
            done[key] = {"batches": batches, "metrics": metrics, "weights": _weights(run), "csv": _csv(run)[1]}
        return done[key]

    return get


@pytest.mark.parametrize("budget", [EPOCHS, STEPS], ids=["max_epochs", "max_steps"])
def test_resume_after_a_mid_epoch_stop_is_exact(data_root, tmp_path, reference, budget):
    """A first run stopped by max_steps=2 in the first epoch (last.ckpt written at its end, mid-epoch);
    resuming with the full budget trains exactly steps 2..11, the same batches of the same
    epochs as an uninterrupted run, to the same weights.  Lightning counted the stopped epoch as
    done: 10 steps for 3 epochs of 4 (by epochs), or an epoch 1 of 2 batches (by steps)."""
    ref = reference(*budget)
    assert [b[0] for b in ref["batches"]] == list(range(12))
    run = tmp_path / "run"
    first, m1 = _run(data_root, run, "trainer.max_epochs=3", "trainer.max_steps=2")
    assert m1["global_step"] == 2 and _ckpt(run)["global_step"] == 2
    batches, metrics = _run(data_root, run, *budget)
    assert metrics["global_step"] == 12
    assert [b[0] for b in batches] == list(range(2, 12))  # exactly the 10 missing steps
    assert _where(first + batches) == _where(ref["batches"])  # same epochs and batch indices
    assert first + batches == ref["batches"]  # and the same data at every step
    assert _same_weights(_weights(run), ref["weights"])


def test_finished_run_stopped_between_saves_keeps_its_last_steps(data_root, tmp_path):
    """max_steps=6 ends mid-epoch two steps after the epoch-end checkpoint: last.ckpt is written at
    step 6 (Lightning left it at step 4, and the same command run again trained steps 5-6 anew)."""
    run = tmp_path / "run"
    _train(data_root, run, "trainer.max_epochs=3", "trainer.max_steps=6")
    assert _ckpt(run)["global_step"] == 6
    export = _weights(run)
    batches, metrics = _run(data_root, run, "trainer.max_epochs=3", "trainer.max_steps=6")
    assert batches == [] and metrics["global_step"] == 6  # finished: nothing trained again
    assert _same_weights(_weights(run), export)


@pytest.mark.parametrize("budget", [EPOCHS, STEPS], ids=["max_epochs", "max_steps"])
def test_second_resume_does_not_rerun_an_epoch(data_root, tmp_path, reference, budget):
    """Two kills: the first resumes from the checkpoint written at the last batch of epoch 0
    (every_n_train_steps=2), the second from a mid-epoch checkpoint of epoch 1 written after
    that resume.  Lightning did not count epoch 1 as started after the first resume, so the
    second resume took the mid-epoch checkpoint for an epoch end and re-ran all of epoch 1 (by
    epochs: 14 steps for 12)."""
    every = ["callbacks.model_checkpoint.every_n_train_steps=2", "callbacks.model_checkpoint.monitor=null"]
    ref = reference(*budget, *every)
    run = tmp_path / "run"
    first, _ = _run(data_root, run, *budget, *every, kill_at=5)
    assert _ckpt(run)["global_step"] == 4
    second, _ = _run(data_root, run, *budget, *every, kill_at=7)
    assert _ckpt(run)["global_step"] == 6
    third, metrics = _run(data_root, run, *budget, *every)
    assert metrics["global_step"] == 12
    assert [b[0] for b in third] == list(range(6, 12))
    assert _where(first[:4] + second[:2] + third) == _where(ref["batches"])
    assert first[:4] + second[:2] + third == ref["batches"]
    assert _same_weights(_weights(run), ref["weights"])


@pytest.mark.parametrize("case", [
    pytest.param((EPOCHS, ["trainer.val_check_interval=2"], 7, 6), id="max_epochs-mid_epoch_checkpoint"),
    pytest.param((STEPS, [], 6, 4), id="max_steps-epoch_end_checkpoint"),
])
def test_csv_log_continues_across_restarts(data_root, tmp_path, reference, case):
    """A kill after the checkpoint at step ``saved``, then the same command: one metrics.csv
    (csv/version_0) whose rows are those of an uninterrupted run, values included; the rows
    logged after the checkpoint were replaced, not repeated.  By steps, an end-of-epoch checkpoint
    made Lightning run a phantom epoch end on resume (epoch 1's shuffle skipped, logging step
    one ahead)."""
    budget, scheme, kill_at, saved = case
    ref = reference(*budget, *scheme, base=LOGGED)
    run = tmp_path / "run"
    first, _ = _run(data_root, run, *budget, *scheme, kill_at=kill_at, base=LOGGED)
    assert _ckpt(run)["global_step"] == saved
    files, rows = _csv(run)
    assert len(files) == 1 and max(int(r["step"]) for r in rows[0]) >= saved  # rows after the checkpoint
    batches, metrics = _run(data_root, run, *budget, *scheme, base=LOGGED)
    files, rows = _csv(run)
    assert [f.parent.name for f in files] == ["version_0"]
    train_steps = [int(r["step"]) for r in rows[0] if r.get("train/loss")]
    assert train_steps == list(range(12))  # every step once
    assert metrics["global_step"] == 12 and [b[0] for b in batches] == list(range(saved, 12))
    assert _where(first[:saved] + batches) == _where(ref["batches"])
    assert first[:saved] + batches == ref["batches"]
    assert rows[0] == ref["csv"][0]
    assert _same_weights(_weights(run), ref["weights"])
    # a fresh start in the same directory starts the log afresh
    _run(data_root, run, *budget, *scheme, "ckpt_path=null", base=LOGGED)
    assert _csv(run)[1] == ref["csv"]


def test_last_ckpt_follows_training_when_val_loss_does_not_improve(data_root, tmp_path):
    """lr=0: val/loss never improves after epoch 0.  last.ckpt still follows every epoch end
    (Lightning 2.6 wrote it only with a new best top-k checkpoint, so a kill in epoch 2 resumed
    from step 4 and trained epoch 1 again)."""
    run = tmp_path / "run"
    _run(data_root, run, "trainer.max_epochs=3", "model.surrogate.module.optimizer.lr=0.0", kill_at=9)
    assert _ckpt(run)["global_step"] == 8


def test_batches_do_not_depend_on_num_workers(data_root, tmp_path, reference):
    """The training order depends on the seed and the epoch only: two DataLoader workers give the
    same batches at every step, and the same weights, as loading in the main process (with
    Lightning's RandomSampler the worker iterator drew its seeds from the global RNG, and the
    shuffles differed from epoch 1 on)."""
    ref = reference(*EPOCHS)
    batches, _ = _run(data_root, tmp_path / "w2", *EPOCHS, "data.num_workers=2")
    assert batches == ref["batches"]
    assert _same_weights(_weights(tmp_path / "w2"), ref["weights"])
    other, _ = _run(data_root, tmp_path / "seed1", *EPOCHS, "seed=1")
    assert [b[3] for b in other] != [b[3] for b in ref["batches"]]  # the order does follow the seed
