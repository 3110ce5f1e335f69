"""``rollout(..., on_failure="retire")``: one trajectory's failure retires it, the others run on
unchanged (bit-identical to a run where nothing failed), and the store says which and when."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from test_rollout import OU, Linear, x0_field

from sns.rollout import RMSSeries, RunningMoments, open_rollout, rollout


def test_nan_in_one_trajectory_retires_only_it(tmp_path):
    x0, k = x0_field(), 13
    ref = rollout(OU(), x0, 40, seed=2)  # nothing fails
    cbs = [RunningMoments(), RMSSeries()]
    res = rollout(OU(nan_at=k), x0, 40, store=tmp_path / "r.zarr", chunk=5, seed=2, on_failure="retire",
                  callbacks=cbs)
    assert (res.status, res.steps_done, res.stop_step) == ("completed", 40, None)
    assert res.retired == {1: k} and "1 of 3 trajectories retired" in res.message
    ds = open_rollout(tmp_path / "r.zarr")
    assert ds.attrs["rollout_retired"] == {"1": k}
    got, want = ds["state"].values, ref.states.numpy()
    np.testing.assert_array_equal(got[[0, 2]], want[[0, 2]])  # the others: bit for bit
    np.testing.assert_array_equal(got[1, :k], want[1, :k])  # the retired one up to its failure
    assert np.isnan(got[1, k:]).all() and np.isnan(ds["rms"].values[1, k:]).all()
    calls = ds["calls"].values
    assert (calls[1, k:] == 0).all() and (calls[0, k:] > 0).any()
    # calls_mean counts the live trajectories only
    live = np.concatenate([calls[[0, 2], 1:].ravel(), calls[1, 1:k]])
    assert res.calls_mean == pytest.approx(live.mean())
    # RunningMoments leaves the NaN rows out
    vals = np.moveaxis(got.astype(np.float64), 2, 0).reshape(got.shape[2], -1)
    m = res.callbacks[0]
    np.testing.assert_allclose(m["mean"], np.nanmean(vals, axis=1), rtol=1e-10)
    np.testing.assert_allclose(m["var"], np.nanvar(vals, axis=1), rtol=1e-10)
    assert np.isnan(res.callbacks[1][k:, 1]).all()


def test_retire_resumes_exactly_after_a_crash(tmp_path):
    x0 = x0_field()
    ref = rollout(OU(nan_at=7), x0, 33, store=tmp_path / "ref.zarr", chunk=5, seed=4, on_failure="retire")
    path = tmp_path / "crash.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        rollout(OU(nan_at=7, fail_at=22), x0, 33, store=path, chunk=5, seed=4, on_failure="retire")
    stepper = OU()
    stepper.n_calls = 19  # last committed chunk ends at step 19
    res = rollout(stepper, x0, 33, store=path, chunk=5, seed=4, on_failure="retire")
    assert res.resumed_from == 19 and res.retired == ref.retired == {1: 7}
    a, b = xr.open_zarr(path, consolidated=False), xr.open_zarr(ref.path, consolidated=False)
    for key in ("state", "rms", "calls"):
        np.testing.assert_array_equal(a[key].values, b[key].values, err_msg=key)
    assert torch.equal(res.final_state, ref.final_state)
    # a store written with the default policy is another configuration
    with pytest.raises(ValueError, match="on_failure"):
        rollout(OU(), x0, 33, store=path, chunk=5, seed=4)


def test_blowup_retires_until_the_last_one_stops_the_rollout(tmp_path):
    x0 = torch.ones(3, 1, 4, 4) * torch.tensor([1.0, 0.1, 0.01]).view(3, 1, 1, 1)
    res = rollout(Linear(1.5), x0, 100, store=tmp_path / "b.zarr", data_rms=1.0, blowup_factor=10.0,
                  on_failure="retire")
    # RMS 1.5^t x0: > 10 first at t = 6 (x0 1), 12 (x0 0.1), 18 (x0 0.01): the last one stops the run
    assert res.retired == {0: 6, 1: 12} and (res.status, res.stop_step, res.steps_done) == ("blowup", 18, 17)
    ds = open_rollout(tmp_path / "b.zarr")
    assert ds.sizes["time"] == 18 and ds.attrs["rollout_bad_trajectories"] == [2]
    assert np.isnan(ds["state"].values[0, 6:]).all() and np.isfinite(ds["state"].values[2]).all()


def test_default_policy_is_unchanged_and_bad_policy_refused(tmp_path):
    res = rollout(OU(nan_at=5), x0_field(), 20, seed=1)
    assert (res.status, res.stop_step, res.retired) == ("nonfinite", 5, {})
    with pytest.raises(ValueError, match="on_failure must be one of"):
        rollout(OU(), x0_field(), 5, on_failure="skip")
