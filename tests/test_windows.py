"""Windowed datasets: indexing, normalisation, lazy opening, worker processes."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sns.data.generate import generate_dataset
from sns.data.io import open_dataset
from sns.data.windows import WindowDataset


@pytest.fixture(scope="module")
def l63(tmp_path_factory):
    out = tmp_path_factory.mktemp("w") / "l63"
    return generate_dataset("lorenz63", "cpu", out=out, progress=None,
                            overrides={"n_frames": 40, "spinup_steps": 10,
                                       "trajectories": {"train": 3, "valid": 1, "test": 1}})


def test_windows_index_and_normalise(l63):
    ds = WindowDataset(l63 / "train.zarr", history=2, horizon=3, stride=4)
    assert ds.per_traj == (40 - 5) // 4 + 1 and len(ds) == 3 * ds.per_traj
    raw = open_dataset(l63)["state"].values
    a = open_dataset(l63).attrs
    traj, t0 = ds.locate(ds.per_traj + 2)
    assert (traj, t0) == (1, 8)
    w = ds[ds.per_traj + 2]
    assert w.shape == (5, 3) and w.dtype == torch.float32
    expect = (raw[1, 8:13] - np.asarray(a["norm_offset"])) / np.asarray(a["norm_scale"])
    np.testing.assert_allclose(w.numpy(), expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.denormalise(w).numpy(), raw[1, 8:13], rtol=1e-5, atol=1e-5)
    mem = WindowDataset(l63 / "train.zarr", history=2, horizon=3, stride=4, in_memory=True)
    assert torch.equal(mem[7], ds[7])
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        WindowDataset(l63 / "train.zarr", horizon=0)


def test_lazy_and_workers(l63):
    ds = WindowDataset(l63 / "train.zarr", history=1, horizon=1)
    assert ds._array is None  # nothing opened before workers start
    loader = DataLoader(ds, batch_size=16, num_workers=2, multiprocessing_context="spawn")
    batches = list(loader)
    assert ds._array is None
    got = torch.cat(batches)
    assert torch.equal(got, torch.stack([ds[i] for i in range(len(ds))]))
