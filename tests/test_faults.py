"""Fault injection (issue 16): sns-generate, sns-train (also during a checkpoint write) and
sns-rollout SIGKILLed at random points, then run again to completion, give the output of an
uninterrupted run bit for bit, with no temporary file left and nothing lost.

The harness is ``benchmarks/faults.py`` (which runs the same trials with a larger ``n`` and
prints the table in benchmarks/RESULTS.md); here ``SNS_FAULTS_N`` trials per command (default 3),
one kill each, delays from a seeded RNG.  Each command is a subprocess: ~1-2 minutes per command
on two cores, so these are ``slow``; ``test_digests_see_a_changed_byte`` (fast) checks that the
comparison the slow tests rely on does see a difference.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
N = int(os.environ.get("SNS_FAULTS_N", "3"))


@pytest.fixture(scope="module")
def faults():
    spec = importlib.util.spec_from_file_location("sns_bench_faults", ROOT / "benchmarks" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def work(faults, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return root, faults.prepare(root)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["generate", "train", "train-ckpt", "rollout", "rollout-create"])
def test_killed_command_resumes_bit_identically(faults, work, command):
    root, inputs = work
    lines = []
    trials = faults.run_command(faults.CLASSES[command](root, inputs), N, kills=1, seed=0, log=lines.append)
    report = "\n".join(lines)
    assert len(trials) == N
    assert sum(t.kills for t in trials) >= 1, report  # the kills landed: something was tested
    if command in ("train-ckpt", "rollout-create"):
        assert sum(t.in_write for t in trials) >= 1, report  # killed with a checkpoint / store half-written
    for t in trials:
        assert t.survived, report  # the re-run completed (exit 0)
        assert not t.lost, report  # every file of the uninterrupted run is there
        assert not t.leaked, report  # no temporary file, nothing the uninterrupted run lacks
        assert t.identical, report  # and the contents are the same


def test_digests_see_a_changed_byte(faults, tmp_path):
    """The comparison of the fault tests: equal for a copy, and it names the difference when one
    state of a rollout store, one checkpoint tensor or one file goes missing changes."""
    from sns.rollout import rollout

    store = tmp_path / "a.zarr"
    rollout(lambda x: 0.9 * x, torch.ones(2, 3), 20, store=store, chunk=4)
    cmd = faults.Rollout(tmp_path, {})
    copy = tmp_path / "b.zarr"
    shutil.copytree(store, copy)
    assert faults._diff(cmd.digest(store), cmd.digest(copy)) == ""
    import zarr

    arr = zarr.open_group(str(copy), mode="r+")["state"]
    values = arr[:]
    values[1, 7, 2] = np.nextafter(values[1, 7, 2], np.float32(2))  # one ulp
    arr[:] = values
    assert "state/c/" in faults._diff(cmd.digest(store), cmd.digest(copy))
    assert faults.listing(copy) == faults.listing(store)
    gone = tmp_path / "c.zarr"
    shutil.copytree(store, gone)
    (gone / "state" / "zarr.json").unlink()
    assert faults._diff(cmd.digest(store), cmd.digest(gone)) == "/state/zarr.json: only in reference"
    # checkpoints: tensors compared by content
    ck = {"global_step": 3, "epoch": 0, "state_dict": {"w": torch.arange(4.0)}, "optimizer_states": []}
    torch.save(ck, tmp_path / "x.ckpt")
    ck["state_dict"]["w"][2] += 1e-6
    torch.save(ck, tmp_path / "y.ckpt")
    assert "state_dict/w" in faults._diff(faults.checkpoint_digest(tmp_path / "x.ckpt"),
                                          faults.checkpoint_digest(tmp_path / "y.ckpt"))
    # a temporary file of each writer is recognised
    for name in ("checkpoints/.last.ckpt.ab_9xy2z.tmp", "state/c/0/zarr.0123456789abcdef0123456789abcdef.partial",
                 ".r.zarr.partial-0a1b2c", "surrogate.safetensors.tmp", ".r.zarr.deleting-ff00"):
        assert faults._temp(name), name
    assert not faults._temp("train.zarr/state/c/0/0/0") and not faults._temp("checkpoints/last.ckpt")


def test_stale_checkpoint_temp_files_are_removed(tmp_path):
    """A kill during atomic_torch_save leaves its temporary file (no except ran); the next fit
    removes it (sns.training.ModelCheckpoint.setup) and nothing else."""
    from sns.training.checkpoint_io import atomic_torch_save, remove_stale_temp_files

    atomic_torch_save({"a": torch.arange(3)}, tmp_path / "last.ckpt")
    stale = [tmp_path / ".last.ckpt.k2j_x9qa.tmp", tmp_path / ".epoch000-step0000003.ckpt.abcdefgh.tmp"]
    for p in stale:
        p.write_bytes(b"PK\x03\x04 half a checkpoint")
    keep = [tmp_path / "last.ckpt", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for p in keep[1:]:
        p.write_bytes(b"x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_stale_rollout_creation_dirs_are_removed(tmp_path):
    """A kill while a rollout store is built leaves its ``.<name>.partial-<hex>`` directory (or,
    during overwrite=true, ``.<name>.deleting-<hex>``); the next creation of that store deletes
    them, and nothing else."""
    import uuid

    from sns.rollout import rollout

    store = tmp_path / "r.zarr"
    stale = [tmp_path / f".r.zarr.partial-{uuid.uuid4().hex}", tmp_path / f".r.zarr.deleting-{uuid.uuid4().hex}"]
    others = [tmp_path / f".other.zarr.partial-{uuid.uuid4().hex}", tmp_path / ".r.zarr.notes"]
    for p in stale + others:
        p.mkdir()
        (p / "zarr.json").write_text("{}")
    res = rollout(lambda x: 0.9 * x, torch.ones(2, 3), 8, store=store, chunk=4)
    assert res.status == "completed"
    assert sorted(tmp_path.iterdir()) == sorted([store, *others])
