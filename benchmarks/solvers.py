"""Solver throughput: steps per second and simulated time per wall-clock second.

For every system and preset at several batch sizes, each case runs in a fresh
subprocess (so peak memory is that case's own), warms up with one step, then
times steps for at least ``--min-seconds``.  Peak memory is the process's max
RSS minus its max RSS after imports (CPU: solver operators, state and stepping workspace), or ``torch.cuda.max_memory_allocated``
(GPU).

    python benchmarks/solvers.py                      # all systems, presets, batches 1 8 32
    python benchmarks/solvers.py --systems kolmogorov --presets cpu --batches 1 8

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def run_case(system: str, preset: str, batch: int, dtype: str, device: str, min_seconds: float) -> dict:
    import resource
    import time

    import torch

    from sns.data.generate import DTYPES
    from sns.systems import get_preset, make_system

    torch.set_num_threads(int(os.environ.get("SNS_BENCH_THREADS", torch.get_num_threads())))
    pre = get_preset(system, preset)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after imports
    sys_obj = make_system(system, **pre.system, dtype=DTYPES[dtype], device=device)
    u = sys_obj.initial_condition(batch, torch.Generator().manual_seed(0))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    u = sys_obj.step(u, 1)  # warm-up (allocations, plans)
    steps, t0 = 0, time.perf_counter()
    n = 1
    while True:
        u = sys_obj.step(u, n)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        steps += n
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            break
        n = min(2 * n, 256)
    finite = bool(torch.isfinite(sys_obj.observe(u)).all())
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {
        "system": system,
        "preset": preset,
        "grid": _grid(pre.system),
        "batch": batch,
        "steps_per_s": steps / elapsed,
        "ms_per_traj_step": 1e3 * elapsed / steps / batch,
        "sim_time_per_s": steps * sys_obj.dt * batch / elapsed,
        "peak_mb": peak_mb,
        "finite": finite,
    }


def _grid(params: dict) -> str:
    for key in ("n", "N", "nx", "grid"):
        if key in params:
            return f"{params[key]}^2"
    return f"D={params.get('dim', 3)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", nargs="+", default=["kolmogorov", "qg", "lorenz63", "lorenz96"])
    p.add_argument("--presets", nargs="+", default=["cpu", "paper"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(**json.loads(args.case))))
        return
    rows = []
    for system in args.systems:
        for preset in args.presets:
            for batch in args.batches:
                case = dict(system=system, preset=preset, batch=batch, dtype=args.dtype,
                            device=args.device, min_seconds=args.min_seconds)
                r = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"{system}/{preset}/batch {batch} failed:\n{r.stderr[-2000:]}", file=sys.stderr)
                    continue
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(f"  done {system}/{preset} batch {batch}", file=sys.stderr, flush=True)
    import torch

    print(f"\nsolver benchmark: device {args.device}, dtype {args.dtype}, torch {torch.__version__}, "
          f"{os.cpu_count()} cores\n")
    print("| system | preset | grid | batch | steps/s | ms per traj-step | sim time / wall s | peak MB | finite |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['system']} | {r['preset']} | {r['grid']} | {r['batch']} | {r['steps_per_s']:.1f} | "
              f"{r['ms_per_traj_step']:.3f} | {r['sim_time_per_s']:.4g} | {r['peak_mb']:.0f} | {r['finite']} |")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
