"""Generic autoregressive rollout over any stepper, streamed to zarr, with guards and resume.

A *stepper* is any callable mapping a batch of states to the next states::

    x_{n} = step(x_{n-1}),      x: (B, *state_shape)  ->  (B, *state_shape)

(fields ``(B, C, H, W)``, vector states ``(B, D)``).  :func:`rollout` iterates it
``n_steps`` times from ``x0`` -- the higher-order function of jax-cfd's
``funcutils.trajectory`` -- and knows nothing about models, channels or physics.

Stepper contract
----------------
* ``step(x) -> x_next`` with the same shape, dtype and device as ``x``, leaving
  ``x`` intact (no in-place update: the previous state is kept for the
  checkpoint and the guards; detected through torch's version counter).  It is
  called under ``torch.no_grad()`` (a stepper that needs autograd inside enables
  it itself).  It must be deterministic given its input and the generator state
  (fixed batch size, same device): that is what makes resume exact.  The rollout
  owns no model: stepping a model in ``eval()`` mode, on the right device, is the
  stepper's business.
* **Randomness.**  If the stepper has a parameter named ``generator`` (for an
  ``nn.Module``: its ``forward`` does), it is called as ``step(x, generator=g)``
  with a ``torch.Generator`` on ``x0.device`` that the rollout seeds from
  ``seed`` and saves with every chunk.  A stochastic stepper must draw all its
  randomness from that generator (``torch.randn(..., generator=g)``); randomness
  from the global RNG is neither reproducible nor resumable.
* **Network-call counter (optional).**  A stepper that declares an attribute
  ``last_calls`` (``None`` before the first call) sets it on every call to the
  number of network evaluations that call spent on each sample: an ``int`` (same
  for every sample) or an integer tensor / array of shape ``(B,)``.  The rollout
  reads it after each call, stores it per step and per trajectory as the
  variable ``calls`` and reports its mean and maximum (DESIGN.md section 5,
  pitfall 6: record calls per step).

Store layout (xarray-compatible zarr v3 group; names in the constants below)
-----------------------------------------------------------------------------
* ``<variable>`` (default ``"state"``): dims ``dims`` (default
  ``("trajectory", "time", "channel", "y", "x")`` for ``(C, H, W)`` states,
  ``("trajectory", "time", "dim")`` for ``(D,)`` states), ``store_dtype``
  (float32 by default), chunked ``(1, chunk, *state_shape)``.  Time index ``n``
  holds the state after ``n`` steps; index 0 is ``x0``.  Unwritten entries are NaN.
* ``rms`` ``(trajectory, time)``: the per-sample RMS of the state
  ``sqrt(mean(x**2))`` over all non-batch elements (the blow-up statistic).
* ``calls`` ``(trajectory, time)`` int32, only for steppers with ``last_calls``
  (0 at time 0, -1 where unwritten).
* coordinates ``trajectory`` (index), ``time`` (steps, int64) and, if ``dt`` is
  given, ``t = time * dt`` (physical time, units of ``dt``).
* attributes: the caller's ``attrs`` (JSON-serialisable, top level) plus
  ``rollout_*`` keys: ``rollout_config`` (what identifies the run),
  ``rollout_status`` (``running`` | ``completed`` | ``nonfinite`` | ``blowup`` |
  ``aborted`` | ``time_limit``), ``rollout_steps_done``, ``rollout_stop_step``,
  ``rollout_message`` and ``rollout_checkpoint`` (resume record, below).
* subgroup ``_checkpoint`` (not seen by ``xr.open_zarr``): array ``state`` of
  shape ``(2, B, *state_shape)`` in the stepper's own dtype, two slots.

Read a store with :func:`open_rollout` (it trims to the steps written) or
``xr.open_zarr(path, consolidated=False)``.

Resume and why it is exact
--------------------------
Memory is flat in ``n_steps``: one chunk of states is buffered, written, reused.
Each completed chunk is *committed* in this order:

1. the chunk's data (``<variable>``, ``rms``, ``calls``) is written;
2. the full-precision last state goes into the *inactive* checkpoint slot;
3. one write of the root group's ``zarr.json`` records step, slot, generator
   state (base64 of ``Generator.get_state()``), callback states, call counts
   and status.

Only step 3 makes the chunk count.  zarr's ``LocalStore`` writes every key
atomically (temporary file, then rename; zarr-python PR #3412, zarr >= 3.1.3),
so a process killed at any point leaves either the old record, pointing at the
untouched old slot, or the new one.  Data written past the recorded step is
ignored and rewritten on resume with identical values, because the stepper is
deterministic given the restored state and generator state.  Hence a rollout
killed at any point and called again with the same arguments produces the same
store, bit for bit, as an uninterrupted one.  (Atomic against process death, not
against power loss: no fsync.)  A new store is built in a temporary directory
and renamed into place, so a kill during creation never leaves a half-made store (the next
creation of that store deletes such leftovers).
There is no locking: do not run two rollouts on one store at the same time.

On a second call with the same configuration a ``running`` or ``time_limit``
store is resumed; a ``completed``, ``nonfinite``, ``blowup`` or ``aborted`` store is final
and its result is returned without stepping.  A store with a different
configuration (shape, seed, n_steps, dtype, x0, guards, the caller's ``identity``:
model-file hashes, noise, refiner settings, ...) or a directory that
is not a rollout store raises ``ValueError`` naming what differs unless ``overwrite=True`` (which
never deletes a directory that is not a zarr store).

Guards
------
The rollout stops the whole batch at step ``k`` if any sample of ``x_k`` is
non-finite (status ``nonfinite``) or its RMS exceeds
``blowup_factor * data_rms`` (status ``blowup``); states ``0..k-1`` are kept,
the arrays are trimmed to them and ``rollout_stop_step = k``.  With
``on_failure="retire"`` only the failing samples stop: they are *retired* (NaN in the store
from step ``k``, ``rollout_retired = {trajectory: k}``) while the rest run on, bit-identical to
a run in which nothing failed; the last sample's failure stops the rollout as above.  A stepper may end the
rollout itself by raising :class:`StopRollout` at step ``k`` (status ``aborted``, same
trimming, its message recorded).  With
``max_wall_time`` (seconds, this call) it stops cleanly at a step boundary with
status ``time_limit``; calling again continues.
"""

from sns.rollout.callbacks import Callback, RMSSeries, RunningMoments, state_rms
from sns.rollout.loop import ON_FAILURE, RolloutResult, rollout
from sns.rollout.stepper import (
    CountingStepper,
    Stepper,
    StochasticStepper,
    StopRollout,
    accepts_generator,
    call_step,
    check_step_output,
    counts_calls,
)
from sns.rollout.store import STATUSES, default_dims, open_rollout

__all__ = [
    "ON_FAILURE",
    "STATUSES",
    "Callback",
    "CountingStepper",
    "RMSSeries",
    "RolloutResult",
    "RunningMoments",
    "Stepper",
    "StochasticStepper",
    "StopRollout",
    "accepts_generator",
    "call_step",
    "check_step_output",
    "counts_calls",
    "default_dims",
    "open_rollout",
    "rollout",
    "state_rms",
]
