"""Performance table: training and rollout throughput and peak memory of every model, one table.

For each experiment and task (``sns-train``'s configs, so the sizes are the presets' own) a
fresh subprocess builds the LightningModule exactly as ``sns-train`` does
(``hydra.utils.instantiate(cfg.model[task].module)``) and measures

* **training**: optimizer steps of the module's own ``training_step`` (loss, backward, AdamW
  step of ``configure_optimizers``) on random windows of the experiment's state shape and window
  length, at the experiment's batch size (``--paper-batch`` for the paper presets); ``samples/s``
  = batch x steps / wall time after one warm-up step.  Data loading and Lightning's loop are
  not included (``sns-train`` on a real data set: RESULTS.md, "Training");
* **static MB**: weights, gradients, buffers (EMA copies) and optimizer state after one step;
  **peak MB**: the peak resident set size during the timed steps (Linux ``VmHWM``, reset after
  the warm-up step) above the resident size after the warm-up: activations and transients;
* **rollout**: the task's stepper at rollout batch ``--rollout-batch`` (8 states), in
  ``torch.no_grad``: the surrogate alone (Gaussian approximation), SNS refinement at fixed
  levels (0, 0) with the identity as proposal (the refinement's own cost: 2 calls), ACDM (S
  calls) and PDE-Refiner (K + 1 calls); ``steps/s`` and ``ms/call`` (wall time per network
  call).  Estimated-level SNS and the Thermalizer cost a data-dependent number of calls: their
  cost is calls/step x ms/call.

The solver rows come from :mod:`benchmarks.solvers`'s ``run_case`` (batch ``--rollout-batch``).

    python benchmarks/performance.py                       # cpu presets + the paper Kolmogorov nets
    python benchmarks/performance.py --experiments lorenz63_cpu --tasks surrogate denoiser

Prints a markdown table; one thread by default (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CPU_EXPERIMENTS = ["kolmogorov_cpu", "qg_cpu", "lorenz63_cpu", "lorenz96_cpu"]
TASKS = ["surrogate", "denoiser", "acdm", "pde_refiner"]


def _vm_hwm_mb() -> float:
    from rollout_memory import _rss_mb

    v = _rss_mb("VmHWM")
    if v is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return v


def _tensors(module, opt):
    """Weights, gradients, buffers and optimizer state of a training module (distinct storages)."""
    import torch

    seen, out = set(), []
    cands = [*module.parameters(), *module.buffers(), *(p.grad for p in module.parameters() if p.grad is not None)]
    for st in opt.state.values():
        cands += [v for v in st.values() if torch.is_tensor(v)]
    for t in cands:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _timed(fn, min_seconds: float, max_iters: int) -> tuple[int, float]:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while n < max_iters:
        fn()
        n += 1
        if time.perf_counter() - t0 >= min_seconds:
            break
    return n, time.perf_counter() - t0


def run_case(experiment: str, task: str, batch: int | None, rollout_batch: int, min_seconds: float,
             max_iters: int, threads: int) -> dict:
    import torch
    from hydra.utils import instantiate

    sys.path.insert(0, str(HERE))
    from lorenz_baselines import compose
    from rollout_memory import _reset_peak, _rss_mb

    from sns.systems import get_preset, make_system

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = compose("train", [f"experiment={experiment}", f"task={task}"])
    pre = get_preset(cfg.system.name, cfg.preset)
    system = make_system(cfg.system.name, **pre.system)
    state = tuple(system.observe(system.initial_condition(1, torch.Generator().manual_seed(0))).shape[1:])
    if len(state) == 2:  # (H, W) vorticity -> one channel
        state = (1, *state)
    window = int(cfg.data.history) + int(cfg.model[task].horizon)
    B = int(batch or cfg.data.batch_size)

    module = instantiate(cfg.model[task].module, _convert_="all")
    params = sum(p.numel() for p in module.model.parameters())
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else (opt[0][0] if isinstance(opt, tuple) else opt)
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(B, window, *state, generator=gen)
    module.train()
    import warnings

    def train_step():
        opt.zero_grad(set_to_none=True)
        out = module.training_step(data, 0)
        loss = out["loss"] if isinstance(out, dict) else out
        loss.backward()
        opt.step()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() outside a Trainer
        train_step()  # warm-up: creates gradients and optimizer state, loads lazy imports
        static = sum(t.numel() * t.element_size() for t in _tensors(module, opt)) / 2**20
        rss1 = _rss_mb("VmRSS") or 0.0
        _reset_peak()
        n, wall = _timed(train_step, min_seconds, max_iters)
    peak = _vm_hwm_mb() - rss1

    # rollout
    module.eval()
    x = torch.randn(rollout_batch, *state, generator=gen)
    row = {"experiment": experiment, "task": task, "kind": module.model_spec["kind"], "params_M": params / 1e6,
           "state": "x".join(map(str, state)), "batch": B, "train_steps": n, "samples_per_s": B * n / wall,
           "s_per_step": wall / n, "static_mb": static,
           "peak_mb": peak, "rollout_batch": rollout_batch}
    model = module.model
    with torch.no_grad():
        if task == "surrogate":
            from sns.baselines import GaussianApproximation

            stepper, calls = GaussianApproximation(model), 1
        elif task == "denoiser":
            from sns.refine import SNSRefiner

            stepper, calls = SNSRefiner(model, module.schedule, lambda z: z, fixed_levels=(0, 0)), 2
        elif task == "acdm":
            from sns.baselines import ACDM

            stepper, calls = ACDM(model, module.schedule), module.schedule.n_levels
        elif task == "pde_refiner":
            from sns.baselines import PDERefiner

            stepper, calls = PDERefiner(model, **module.export_extra()["pde_refiner"]), None
        else:
            raise ValueError(f"no rollout stepper for task {task!r}")
        g = torch.Generator().manual_seed(2)
        n_r, wall_r = _timed(lambda: stepper(x, g) if task != "surrogate" else stepper(x), min_seconds / 2,
                             max_iters)
        got = getattr(stepper, "last_calls", None)
        if got is not None:  # per-sample counts (tensor) or one count
            calls = int(torch.as_tensor(got).max())
    row.update(rollout_steps_per_s=n_r / wall_r, calls=calls, ms_per_call=1e3 * wall_r / n_r / calls)
    return row


def solver_case(experiment: str, rollout_batch: int, min_seconds: float, threads: int) -> dict:
    sys.path.insert(0, str(HERE))
    from lorenz_baselines import compose
    from solvers import run_case as solver_run

    os.environ["SNS_BENCH_THREADS"] = str(threads)
    cfg = compose("train", [f"experiment={experiment}", "task=surrogate"])
    r = solver_run(cfg.system.name, cfg.preset, rollout_batch, "float32", "cpu", min_seconds)
    return {"experiment": experiment, "task": "solver", "kind": f"{r['system']} {r['grid']}", "params_M": None,
            "state": r["grid"], "batch": rollout_batch, "rollout_steps_per_s": r["steps_per_s"],
            "peak_mb": r["peak_mb"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", nargs="+", default=CPU_EXPERIMENTS)
    p.add_argument("--paper", nargs="*", default=["kolmogorov_paper"],
                   help="paper-size experiments, trained at --paper-batch (surrogate and denoiser only)")
    p.add_argument("--paper-batch", type=int, default=2)
    p.add_argument("--tasks", nargs="+", default=TASKS)
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the experiment's)")
    p.add_argument("--rollout-batch", type=int, default=8)
    p.add_argument("--min-seconds", type=float, default=8.0)
    p.add_argument("--max-iters", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        case = json.loads(args.case)
        fn = solver_case if case.pop("solver", False) else run_case
        print(json.dumps(fn(**case)))
        return
    cases = []
    for exp in args.experiments:
        cases.append({"solver": True, "experiment": exp, "rollout_batch": args.rollout_batch,
                      "min_seconds": args.min_seconds / 2, "threads": args.threads})
        cases += [{"experiment": exp, "task": t, "batch": args.batch, "rollout_batch": args.rollout_batch,
                   "min_seconds": args.min_seconds, "max_iters": args.max_iters, "threads": args.threads}
                  for t in args.tasks]
    for exp in args.paper or []:
        cases += [{"experiment": exp, "task": t, "batch": args.paper_batch, "rollout_batch": 1,
                   "min_seconds": args.min_seconds, "max_iters": 3, "threads": args.threads}
                  for t in ("surrogate", "denoiser") if t in args.tasks]
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for case in cases:
        label = f"{case['experiment']}/{case.get('task', 'solver')}"
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True,
                           env=env)
        if r.returncode != 0:
            print(f"{label} failed:\n{r.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"  done {label} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    import torch

    print(f"\nperformance: torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores; "
          f"rollout batch {args.rollout_batch} (paper nets: 1)\n")
    print("| experiment | task | model | params (M) | state | train batch | train samples/s | s/train step "
          "| static MB | train peak MB | rollout steps/s | calls/step | ms/call |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        print(f"| {r['experiment']} | {r['task']} | {r['kind']} | {f(r.get('params_M'), '.3g')} | {r['state']} "
              f"| {f(r.get('batch') if r['task'] != 'solver' else None, 'd')} | {f(r.get('samples_per_s'), '.1f')} "
              f"| {f(r.get('s_per_step'), '.3f')} | {f(r.get('static_mb'), '.1f')} | {f(r.get('peak_mb'), '.0f')} "
              f"| {f(r.get('rollout_steps_per_s'), '.3g')} | {f(r.get('calls'), 'd')} "
              f"| {f(r.get('ms_per_call'), '.2f')} |")


if __name__ == "__main__":
    main()
