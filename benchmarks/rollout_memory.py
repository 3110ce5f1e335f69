"""Peak memory of a streamed rollout versus its length: it must be flat in the number of steps.

Each case runs in a fresh subprocess (so peaks do not mix) that rolls out a cheap
stochastic stepper, an Ornstein-Uhlenbeck map ``x -> 0.95 x + 0.3 xi`` with
``xi ~ N(0, 1)`` drawn from the rollout's generator, on a field of shape
``(4, 1, 32, 32)`` (16 KiB of float32 per state), streaming to a zarr store with
64-step chunks and a :class:`sns.rollout.RunningMoments` callback.  The child reports

* ``peak MB``: peak resident set size of the rollout itself, in MiB: Linux's
  ``VmHWM`` after resetting it (``/proc/self/clear_refs``) once torch, zarr and
  xarray are imported and the store is created by a 1-step warm-up, minus the
  resident size at that point (``getrusage`` max RSS where the reset is
  unavailable);
* ``py MB``: peak of Python-level allocations (``tracemalloc``, includes numpy
  buffers, not torch's allocator);
* ``RSS MB``: the absolute peak RSS of the process.

The few MB by which the streamed peak still rises between 2,000 and 20,000 steps
are glibc's per-thread malloc arenas of zarr's I/O threads filling up: with
``MALLOC_ARENA_MAX=1`` they vanish, and the resident size plateaus (measured
here: +0.2 MB between steps 12,800 and 38,400 of a 40,000-step run).
``tracemalloc`` slows Python-level code, so ``steps/s`` are lower bounds.

A control case keeps the states in memory (``store=None``): its memory grows with
the number of steps (20,000 states are 328 MB), which shows that the measurement
can see growth.  Run: ``python benchmarks/rollout_memory.py`` (about a minute on
two cores); ``--steps 2000 20000`` to choose the lengths, ``--no-control`` to skip
the in-memory case.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

SHAPE = (4, 1, 32, 32)
CHUNK = 64


def _rss_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(n_steps: int, in_memory: bool) -> dict[str, float]:
    """Run one case in this process and return its measurements."""
    import torch

    from sns.rollout import RunningMoments, rollout

    torch.set_num_threads(1)

    def ou(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return 0.95 * x + 0.3 * torch.randn(x.shape, generator=generator)

    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        store = None if in_memory else Path(tmp) / "bench.zarr"
        rollout(ou, x0, 1, store=None if in_memory else Path(tmp) / "warm.zarr", progress=False)
        reset = _reset_peak()
        base = _rss_mb("VmRSS") or 0.0
        tracemalloc.start()
        start = time.perf_counter()
        res = rollout(
            ou, x0, n_steps, store=store, chunk=CHUNK, callbacks=[RunningMoments()], progress=False
        )
        wall = time.perf_counter() - start
        py_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        assert res.status == "completed" and res.steps_done == n_steps, res
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        hwm = _rss_mb("VmHWM") if reset else None
        return {
            "steps": n_steps,
            "mode": "in memory" if in_memory else "zarr",
            "wall_s": wall,
            "steps_per_s": n_steps / wall,
            "peak_mb": (hwm if hwm is not None else max_rss) - base,
            "py_mb": py_peak,
            "rss_mb": hwm if hwm is not None else max_rss,
        }


def run_case(n_steps: int, in_memory: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", str(n_steps)] + (
        ["--in-memory"] if in_memory else []
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--no-control", action="store_true", help="skip the in-memory case")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.in_memory)))
        return

    modes = [False] if args.no_control else [False, True]
    rows = [run_case(n, mem) for mem in modes for n in sorted(args.steps)]
    print(f"rollout of a {SHAPE} float32 field, chunk {CHUNK}, one subprocess per case")
    header = (
        f"{'mode':>9} {'steps':>7} {'wall s':>8} {'steps/s':>9} {'peak MB':>8} {'py MB':>7} "
        f"{'RSS MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['mode']:>9} {r['steps']:>7d} {r['wall_s']:>8.2f} {r['steps_per_s']:>9.0f} "
            f"{r['peak_mb']:>8.1f} {r['py_mb']:>7.2f} {r['rss_mb']:>8.1f}"
        )
    for mode in ("zarr", "in memory"):
        sel = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["steps"])
        if len(sel) >= 2:
            lo, hi = sel[0], sel[-1]
            print(
                f"{mode}: {hi['steps'] // lo['steps']}x the steps -> peak MB x"
                f"{hi['peak_mb'] / max(lo['peak_mb'], 1e-9):.2f}, py MB x"
                f"{hi['py_mb'] / max(lo['py_mb'], 1e-9):.2f}, absolute RSS "
                f"{lo['rss_mb']:.0f} -> {hi['rss_mb']:.0f} MB"
            )


if __name__ == "__main__":
    main()
