"""Tests of the generic streamed rollout (sns/rollout.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from sns.rollout import (
    RMSSeries,
    RunningMoments,
    open_rollout,
    rollout,
    state_rms,
)


class Linear:
    """x -> a x (deterministic, no generator)."""

    def __init__(self, a: float) -> None:
        self.a = a
        self.n_calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.n_calls += 1
        return self.a * x


class OU(torch.nn.Module):
    """Stochastic stepper x -> a x + sigma * noise, with a per-sample call counter.

    ``last_calls`` follows the optional counter protocol: sample b spends
    ``(n + b) % 4`` calls on the n-th call.  ``fail_at`` raises on that call
    (simulated crash); ``nan_at`` returns NaN in sample 1 on that call.
    """

    def __init__(
        self,
        a: float = 0.9,
        sigma: float = 0.3,
        fail_at: int | None = None,
        nan_at: int | None = None,
    ) -> None:
        super().__init__()
        self.a, self.sigma, self.fail_at, self.nan_at = a, sigma, fail_at, nan_at
        self.n_calls = 0
        self.last_calls: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.n_calls += 1
        if self.fail_at is not None and self.n_calls == self.fail_at:
            raise RuntimeError(f"simulated crash at call {self.n_calls}")
        out = self.a * x + self.sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        if self.nan_at is not None and self.n_calls == self.nan_at:
            out[1] = float("nan")
        self.last_calls = (self.n_calls + torch.arange(x.shape[0])) % 4
        return out


def x0_field(batch: int = 3, channels: int = 2, n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, n, n, generator=torch.Generator().manual_seed(seed))


def stored(path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    return {name: arr[...] for name, arr in root.arrays()}


def test_linear_stepper_gives_powers_exactly(tmp_path):
    x0 = x0_field()
    a, n_steps = 0.5, 40  # powers of 1/2 are exact in float32
    res = rollout(
        Linear(a),
        x0,
        n_steps,
        store=tmp_path / "lin.zarr",
        chunk=8,
        dt=0.25,
        attrs={"model": "linear", "a": a},
    )
    assert (res.status, res.steps_done, res.stop_step) == ("completed", 40, None)
    assert res.calls_mean is None and res.calls_max is None  # no counter declared
    ds = open_rollout(tmp_path / "lin.zarr")
    assert ds["state"].dims == ("trajectory", "time", "channel", "y", "x")
    expected = np.stack([a**n * x0.numpy() for n in range(n_steps + 1)], axis=1)
    np.testing.assert_array_equal(ds["state"].values, expected)
    np.testing.assert_allclose(ds["time"].values, 0.25 * np.arange(41))  # physical, like a data set
    np.testing.assert_array_equal(ds["step"].values, np.arange(41))
    assert "step" in ds.coords and ds["time"].attrs["dt"] == 0.25
    np.testing.assert_allclose(ds["rms"].values[:, 5], state_rms(x0).numpy() * a**5, rtol=1e-6)
    assert ds.attrs["model"] == "linear" and ds.attrs["a"] == 0.5
    assert ds.attrs["rollout_status"] == "completed" and ds.attrs["rollout_steps_done"] == 40
    torch.testing.assert_close(res.final_state, a**40 * x0, rtol=0, atol=0)


def test_linear_float64_and_vector_state(tmp_path):
    x0 = torch.randn(4, 3, dtype=torch.float64)
    res = rollout(Linear(0.9), x0, 30, store=tmp_path / "v.zarr", chunk=4, store_dtype="float64")
    ds = open_rollout(tmp_path / "v.zarr")
    assert ds["state"].dims == ("trajectory", "time", "dim")
    expected = np.stack([0.9**n * x0.numpy() for n in range(31)], axis=1)
    np.testing.assert_allclose(ds["state"].values, expected, rtol=1e-13)
    assert res.final_state.dtype == torch.float64


def test_chunking_invariance(tmp_path):
    x0 = x0_field()
    r7 = rollout(OU(), x0, 50, store=tmp_path / "c7.zarr", chunk=7, seed=3)
    r100 = rollout(OU(), x0, 50, store=tmp_path / "c100.zarr", chunk=100, seed=3)
    r1 = rollout(OU(), x0, 50, store=tmp_path / "c1.zarr", chunk=1, seed=3)
    a, b, c = (
        stored(tmp_path / "c7.zarr"),
        stored(tmp_path / "c100.zarr"),
        stored(tmp_path / "c1.zarr"),
    )
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        np.testing.assert_array_equal(a[key], c[key], err_msg=key)
    assert torch.equal(r7.final_state, r100.final_state) and torch.equal(
        r7.final_state, r1.final_state
    )
    assert np.isfinite(a["state"]).all()


def test_in_memory_equals_store(tmp_path):
    x0 = x0_field()
    mem = rollout(OU(), x0, 20, chunk=6, seed=1)
    disk = rollout(OU(), x0, 20, store=tmp_path / "d.zarr", chunk=6, seed=1)
    assert mem.path is None and disk.states is None
    assert mem.states.shape == (3, 21, 2, 6, 6)
    np.testing.assert_array_equal(mem.states.numpy(), stored(tmp_path / "d.zarr")["state"])
    assert mem.calls_mean == disk.calls_mean


def test_seed_controls_stochastic_stepper():
    x0 = x0_field()
    a = rollout(OU(), x0, 10, seed=5).states
    b = rollout(OU(), x0, 10, seed=5).states
    c = rollout(OU(), x0, 10, seed=6).states
    assert torch.equal(a, b)
    assert (a[:, 1:] - c[:, 1:]).abs().mean() > 0.1  # noise of std 0.3 differs


def test_nonfinite_stops_at_step_k(tmp_path):
    x0 = x0_field()
    k = 13
    path = tmp_path / "nan.zarr"
    stepper = OU(nan_at=k)
    res = rollout(stepper, x0, 40, store=path, chunk=5, seed=2)
    assert (res.status, res.stop_step, res.steps_done) == ("nonfinite", 13, 12)
    assert "step 13" in res.message and "[1]" in res.message
    raw = xr.open_zarr(path, consolidated=False)  # trimmed: readable without helpers
    assert raw.sizes["time"] == k and raw.attrs["rollout_status"] == "nonfinite"
    assert raw.attrs["rollout_stop_step"] == 13 and raw.attrs["rollout_bad_trajectories"] == [1]
    values = raw["state"].values
    assert np.isfinite(values).all()
    ref = rollout(OU(), x0, 12, seed=2)  # same seed, stops before the NaN
    np.testing.assert_array_equal(values, ref.states.numpy())
    torch.testing.assert_close(res.final_state, ref.final_state, rtol=0, atol=0)
    # the store is final: calling again returns the stop without stepping
    again = OU(nan_at=k)
    res2 = rollout(again, x0, 40, store=path, chunk=5, seed=2)
    assert again.n_calls == 0 and (res2.status, res2.stop_step, res2.steps_done) == (
        "nonfinite",
        13,
        12,
    )


def test_blowup_detection(tmp_path):
    x0 = torch.ones(2, 1, 4, 4)  # RMS exactly 1
    res = rollout(Linear(1.5), x0, 100, store=tmp_path / "b.zarr", data_rms=1.0, blowup_factor=10.0)
    # 1.5**5 = 7.6 <= 10 < 1.5**6 = 11.4
    assert (res.status, res.stop_step, res.steps_done) == ("blowup", 6, 5)
    ds = open_rollout(tmp_path / "b.zarr")
    assert ds.sizes["time"] == 6 and ds.attrs["rollout_status"] == "blowup"
    np.testing.assert_allclose(ds["rms"].values[0], 1.5 ** np.arange(6), rtol=1e-6)
    # without data_rms the same run completes
    assert rollout(Linear(1.5), x0, 30).status == "completed"


def _reference(tmp_path, x0, n_steps, chunk, seed):
    """The uninterrupted run, in its own store."""
    cbs = [RunningMoments(), RMSSeries()]
    return rollout(
        OU(), x0, n_steps, store=tmp_path / "ref.zarr", chunk=chunk, seed=seed, callbacks=cbs
    )


def _assert_same_as_reference(path, res, ref):
    got, want = stored(path), stored(ref.path)
    assert got.keys() == want.keys() == {"state", "rms", "calls", "time", "step", "trajectory"}
    for key in want:  # every stored array, bit for bit
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert res.status == "completed" and res.steps_done == ref.steps_done
    assert torch.equal(res.final_state, ref.final_state)
    assert (res.calls_mean, res.calls_max) == (ref.calls_mean, ref.calls_max)
    for a, b in zip(res.callbacks[0].values(), ref.callbacks[0].values()):
        np.testing.assert_array_equal(a, b)  # RunningMoments, restored from the checkpoint
    np.testing.assert_array_equal(res.callbacks[1], ref.callbacks[1])  # RMSSeries, replayed


def test_resume_after_crash_is_exact(tmp_path):
    x0, path = x0_field(), tmp_path / "crash.zarr"
    ref = _reference(tmp_path, x0, 45, 10, seed=7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        rollout(
            OU(fail_at=24),
            x0,
            45,
            store=path,
            chunk=10,
            seed=7,
            callbacks=[RunningMoments(), RMSSeries()],
        )
    assert zarr.open_group(str(path), mode="r").attrs["rollout_steps_done"] == 19  # last chunk
    stepper = OU()
    stepper.n_calls = 19  # same per-call counter sequence as the uninterrupted stepper
    res = rollout(
        stepper, x0, 45, store=path, chunk=10, seed=7, callbacks=[RunningMoments(), RMSSeries()]
    )
    assert res.resumed_from == 19 and stepper.n_calls == 45
    _assert_same_as_reference(path, res, ref)


def test_resume_after_crash_before_first_chunk(tmp_path):
    x0, path = x0_field(), tmp_path / "early.zarr"
    ref = _reference(tmp_path, x0, 12, 10, seed=8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        rollout(OU(fail_at=3), x0, 12, store=path, chunk=10, seed=8)
    assert zarr.open_group(str(path), mode="r").attrs["rollout_steps_done"] == -1
    res = rollout(
        OU(), x0, 12, store=path, chunk=10, seed=8, callbacks=[RunningMoments(), RMSSeries()]
    )
    assert res.resumed_from is None
    _assert_same_as_reference(path, res, ref)


def test_resume_after_kill_between_data_and_commit(tmp_path, monkeypatch):
    """A kill after a chunk's data and checkpoint slot are written, before the attrs commit."""
    x0, path = x0_field(), tmp_path / "kill.zarr"
    ref = _reference(tmp_path, x0, 33, 8, seed=11)
    calls = {"n": 0}
    original = zarr.Group.update_attributes

    def dying(self, new_attributes):
        if new_attributes.get("rollout_checkpoint") is not None:  # a chunk commit
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt("killed before the commit of the third chunk")
        return original(self, new_attributes)

    monkeypatch.setattr(zarr.Group, "update_attributes", dying)
    stepper = OU()
    with pytest.raises(KeyboardInterrupt):
        rollout(
            stepper, x0, 33, store=path, chunk=8, seed=11, callbacks=[RunningMoments(), RMSSeries()]
        )
    monkeypatch.setattr(zarr.Group, "update_attributes", original)
    assert stepper.n_calls == 23  # steps 16..23 were computed and written, not committed
    attrs = zarr.open_group(str(path), mode="r").attrs
    assert attrs["rollout_steps_done"] == 15 and attrs["rollout_status"] == "running"
    stepper = OU()
    stepper.n_calls = 15
    res = rollout(
        stepper, x0, 33, store=path, chunk=8, seed=11, callbacks=[RunningMoments(), RMSSeries()]
    )
    assert res.resumed_from == 15
    _assert_same_as_reference(path, res, ref)


def test_resume_removes_zarr_key_temps_left_by_a_kill(tmp_path):
    """zarr's LocalStore writes a key to ``<key>.<hex>.partial`` and renames it: a SIGKILL in
    between leaves the temp file (found by the kill -9 suite, tests/test_faults.py).  The resumed
    run removes such files and equals an uninterrupted run; other files are left alone."""
    x0, path = x0_field(), tmp_path / "temps.zarr"
    ref = _reference(tmp_path, x0, 33, 8, seed=12)
    with pytest.raises(RuntimeError, match="simulated crash"):
        rollout(OU(fail_at=20), x0, 33, store=path, chunk=8, seed=12, callbacks=[RunningMoments(), RMSSeries()])
    temps = [path / "zarr.0123456789abcdef0123456789abcdef.partial",
             path / "state" / "zarr.fedcba9876543210fedcba9876543210.partial"]
    for t in temps:
        t.write_bytes(b'{"half a')
    kept = path / "notes.partial"  # not a zarr temp: not ours to delete
    kept.write_text("user file")
    stepper = OU()
    stepper.n_calls = 15
    res = rollout(stepper, x0, 33, store=path, chunk=8, seed=12, callbacks=[RunningMoments(), RMSSeries()])
    assert res.resumed_from == 15
    assert not any(t.exists() for t in temps) and kept.exists()
    kept.unlink()
    _assert_same_as_reference(path, res, ref)


def test_time_limit_and_repeated_resume(tmp_path):
    x0, path = x0_field(), tmp_path / "cap.zarr"
    ref = _reference(tmp_path, x0, 12, 5, seed=4)
    stepper, statuses = OU(), []
    for _ in range(20):  # max_wall_time=0 allows exactly one step per call
        res = rollout(
            stepper,
            x0,
            12,
            store=path,
            chunk=5,
            seed=4,
            max_wall_time=0.0,
            callbacks=[RunningMoments(), RMSSeries()],
        )
        statuses.append(res.status)
        if res.status == "completed":
            break
        if len(statuses) == 1:  # a partial store reads back as the steps written so far
            assert open_rollout(path).sizes["time"] == 2
            assert xr.open_zarr(path, consolidated=False).sizes["time"] == 13
            assert np.isnan(stored(path)["state"][:, 2:]).all()
    assert statuses == ["time_limit"] * 11 + ["completed"]
    _assert_same_as_reference(path, res, ref)
    # a completed store is returned as is
    again = OU()
    assert (
        rollout(again, x0, 12, store=path, chunk=5, seed=4).steps_done == 12 and again.n_calls == 0
    )


def test_refuses_foreign_and_mismatched_stores(tmp_path):
    x0 = x0_field()
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("a", shape=(3,), dtype="f4")
    with pytest.raises(ValueError, match="not written by sns.rollout"):
        rollout(Linear(0.5), x0, 5, store=foreign)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a zarr store"):
        rollout(Linear(0.5), x0, 5, store=plain, overwrite=True)
    assert (plain / "notes.txt").read_text() == "keep me"

    path = tmp_path / "run.zarr"
    rollout(OU(), x0, 10, store=path, chunk=4, seed=1)
    for kwargs, key in [
        ({"seed": 2}, "seed"),
        ({"n_steps": 11}, "n_steps"),
        ({"x0": x0_field(batch=2)}, "batch"),
        ({"x0": x0_field(seed=9)}, "x0_sha256"),
        ({"data_rms": 1.0}, "data_rms"),
    ]:
        args = {"x0": x0, "n_steps": 10, "seed": 1, **kwargs}
        with pytest.raises(ValueError, match=f"another configuration.*{key}"):
            rollout(
                OU(),
                args["x0"],
                args["n_steps"],
                store=path,
                seed=args["seed"],
                data_rms=kwargs.get("data_rms"),
            )
    res = rollout(OU(), x0, 11, store=path, seed=2, overwrite=True)
    assert res.steps_done == 11 and zarr.open_group(str(path)).attrs["rollout_config"]["seed"] == 2
    # the foreign zarr store may be replaced on request
    assert rollout(Linear(0.5), x0, 5, store=foreign, overwrite=True).status == "completed"


def test_running_moments_match_numpy(tmp_path):
    x0 = x0_field(batch=3, channels=2) * torch.tensor([1.0, 5.0]).view(1, 2, 1, 1) + 2.0
    moments = RunningMoments()
    rollout(OU(a=0.95, sigma=0.5), x0, 37, store=tmp_path / "m.zarr", chunk=6, callbacks=[moments])
    out = moments.on_end(37, "completed")
    data = stored(tmp_path / "m.zarr")["state"].astype(np.float64)
    assert out["count"] == 3 * 38 * 36
    np.testing.assert_allclose(out["mean"], data.mean(axis=(0, 1, 3, 4)), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out["var"], data.var(axis=(0, 1, 3, 4)), rtol=1e-12)
    assert out["var"][1] > 4 * out["var"][0]  # the channels really differ
    # vector states: one moment per component
    vec = RunningMoments()
    res = rollout(Linear(0.5), torch.arange(6.0).view(2, 3), 3, callbacks=[vec])
    np.testing.assert_allclose(res.callbacks[0]["mean"], res.states.numpy().mean(axis=(0, 1)))


def test_calls_per_step_recorded(tmp_path):
    x0 = x0_field(batch=3)
    res = rollout(OU(), x0, 20, store=tmp_path / "calls.zarr", chunk=6)
    calls = stored(tmp_path / "calls.zarr")["calls"]
    n = np.arange(1, 21)
    expected = (n[None, :] + np.arange(3)[:, None]) % 4
    np.testing.assert_array_equal(calls[:, 0], 0)
    np.testing.assert_array_equal(calls[:, 1:], expected)
    assert res.calls_mean == pytest.approx(expected.mean()) and res.calls_max == 3

    class Scalar:
        last_calls = None

        def __call__(self, x):
            self.last_calls = 5
            return x

    res = rollout(Scalar(), x0, 4)
    assert (res.calls_mean, res.calls_max) == (5.0, 5)

    class Bad(Scalar):
        def __call__(self, x):
            self.last_calls = torch.tensor([1, 2])  # wrong length
            return x

    with pytest.raises(ValueError, match="last_calls"):
        rollout(Bad(), x0, 4)


def test_bad_stepper_output_and_arguments(tmp_path):
    x0 = x0_field()
    with pytest.raises(ValueError, match=r"shape \(3, 2, 6, 6\).*at step 1"):
        rollout(lambda x: x[:, :1], x0, 3)
    with pytest.raises(ValueError, match="dtype"):
        rollout(lambda x: x.double(), x0, 3)
    with pytest.raises(ValueError, match="in place at step 1"):
        rollout(lambda x: x.mul_(0.5), x0.clone(), 3)
    assert rollout(lambda x: x, x0, 3).status == "completed"  # identity is fine
    with pytest.raises(ValueError, match="n_steps"):
        rollout(Linear(1.0), x0, 0)
    with pytest.raises(ValueError, match="chunk"):
        rollout(Linear(1.0), x0, 3, chunk=0)
    with pytest.raises(ValueError, match="JSON"):
        rollout(Linear(1.0), x0, 3, store=tmp_path / "j.zarr", attrs={"f": object()})
    with pytest.raises(ValueError, match="rollout_"):
        rollout(Linear(1.0), x0, 3, attrs={"rollout_status": "x"})
    with pytest.raises(ValueError, match="dims"):
        rollout(Linear(1.0), x0, 3, dims=("trajectory", "time", "y", "x"))
    with pytest.raises(ValueError, match="non-finite"):
        rollout(Linear(1.0), x0 * math.nan, 3)
    assert not (tmp_path / "j.zarr").exists()


def test_stores_of_the_earlier_layout_open_in_the_current_one(tmp_path):
    """A store written before 2026-12-03 had time = step index and t = physical time; open_rollout
    shows it with time physical and step the index (the files unchanged), and a store without dt
    keeps the step as its time."""
    import xarray as xr

    from sns.evaluation import Source

    rollout(Linear(0.5), x0_field(), 6, store=tmp_path / "new.zarr", chunk=4, dt=0.1)
    assert Source(tmp_path / "new.zarr").dt == 0.1  # sns-evaluate's frame interval
    root = zarr.open_group(str(tmp_path / "new.zarr"), mode="r+")  # rewrite it in the old layout
    root.create_array("t", data=np.arange(7) * 0.1, dimension_names=("time",), attributes={"dt": 0.1})
    root["time"][...] = np.arange(7)
    root["state"].attrs["coordinates"] = "t"
    del root["step"]
    ds = open_rollout(tmp_path / "new.zarr")
    np.testing.assert_allclose(ds["time"].values, 0.1 * np.arange(7))
    np.testing.assert_array_equal(ds["step"].values, np.arange(7))
    assert "t" not in ds.variables and ds["time"].attrs["dt"] == 0.1
    assert Source(tmp_path / "new.zarr").dt == 0.1
    raw = xr.open_zarr(tmp_path / "new.zarr", consolidated=False)
    assert "t" in raw.variables and "step" not in raw.variables  # nothing was written
    rollout(Linear(0.5), x0_field(), 3, store=tmp_path / "nodt.zarr", chunk=4)
    ds = open_rollout(tmp_path / "nodt.zarr")
    np.testing.assert_array_equal(ds["time"].values, np.arange(4))
    np.testing.assert_array_equal(ds["step"].values, np.arange(4))
    assert Source(tmp_path / "nodt.zarr").dt is None
