"""Fault injection (issue 16, "nothing lost, nothing mixed"): SIGKILL sns-generate, sns-train and
sns-rollout at random points, run the same command again to completion, and compare the result
with an uninterrupted run.

    OMP_NUM_THREADS=1 python benchmarks/faults.py --n 10            # every command, 10 trials each
    python benchmarks/faults.py --n 3 --commands rollout,train-ckpt --seed 1 --keep /tmp/faults

For every command, one uninterrupted reference run, then ``--n`` trials.  A trial starts the
command as a subprocess (its own process group), SIGKILLs the group at a point drawn from a
seeded RNG (``--seed``, so the schedule is reproducible; where a kill lands still depends on
the machine's speed), repeats that ``--kills`` times, then runs the same command to completion
and compares its output with the reference:

* ``generate``: ``sns-generate`` of a small Lorenz-63 data set (4/2/2 trajectories of 200
  frames, one trajectory per batch); killed after a uniform delay in ``[0, 0.8 T]`` from the
  moment its lock file appears (``T``: the reference's time from then to its exit).  Compared:
  the bytes of every file of the data set (its lock file only by name: it holds a pid);
* ``train``: ``sns-train`` of the Lorenz-63 residual-MLP surrogate, 3 epochs x 8 batches,
  a checkpoint every 3 steps (``last.ckpt`` follows every one), CSV log; killed after a uniform
  delay from the moment its log directory appears.  Compared: the exported
  ``surrogate.safetensors`` (its tensors and metadata: safetensors writes the metadata in a
  random order), every checkpoint's weights (raw and EMA), optimizer state, step and epoch, the
  CSV log's rows (step, epoch, losses; not the throughput) and ``hparams.yaml``;
* ``train-ckpt``: the same training, killed the moment the k-th checkpoint temporary file
  (``checkpoints/.<name>.<random>.tmp``, :func:`sns.training.checkpoint_io.atomic_torch_save`)
  appears, k drawn from the RNG: a kill while a checkpoint is being written;
* ``rollout``: ``sns-rollout`` of a surrogate with Gaussian noise (``gaussian.sigma=0.05``: the
  generator state must be restored exactly; ``blowup_factor=1e6``: the random surrogate drifts
  and must not stop early), 2 trajectories x 1000 steps, 8-step chunks; killed after a uniform
  delay from the moment its store appears.  Compared: every array of the store (states, RMS,
  the checkpoint slots) by bytes, and its attributes without the timing entries
  (``rollout_created``, ``rollout_checkpoint.wall_time_s``);
* ``rollout-create``: the same rollout, killed the moment the temporary directory in which its
  store is built (``.<name>.partial-<hex>``, renamed into place when complete) appears.

Columns: ``kills`` (SIGKILLs delivered to a running command; a command that ended before its
kill time is not counted), ``in a write`` (kills after which a temporary file of a write in
progress was found: a checkpoint temp file, a zarr ``*.partial`` key or a ``.partial`` store),
``survived`` (trials whose final run exited 0), ``bit-identical`` (trials whose output equals the
reference), ``temp files leaked`` (temporary files left after the final run), ``data lost``
(trials whose output lacks a file of the reference, or whose final run failed).
The test suite runs the same trials with a small ``n`` (``tests/test_faults.py``, marked slow).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("generate", "train", "train-ckpt", "rollout", "rollout-create")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
       "HYDRA_FULL_ERROR": "1"}
#: a path component that names the temporary file of a write in progress: checkpoint and
#: safetensors temps (``*.tmp``: sns.training.checkpoint_io.atomic_torch_save, sns.export), zarr's
#: per-key temps (``<key>.<uuid hex>.partial``, zarr.storage.LocalStore), sns.rollout's store in
#: creation / in deletion (``.<name>.partial-<hex>``, ``.<name>.deleting-<hex>``)
TEMP = re.compile(r"(\.tmp$)|(\.[0-9a-f]{32}\.partial$)|(\.partial-[0-9a-f]+$)|(\.deleting-[0-9a-f]+$)")


def _temp(rel: str) -> bool:
    return any(TEMP.search(part) for part in rel.split("/"))


@dataclass
class Trial:
    kills: int = 0
    in_write: int = 0
    survived: bool = False
    identical: bool = False
    leaked: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    detail: str = ""


# --------------------------------------------------------------------------------- processes


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def run_to_end(argv: list[str], log: Path, timeout: float = 600) -> tuple[int, float]:
    """Run a command to its end; returns (exit code, seconds)."""
    t0 = time.perf_counter()
    proc = _start(argv, log)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = -9
    return code, time.perf_counter() - t0


def run_and_kill(argv: list[str], log: Path, trigger: Callable[[], bool], poll: float,
                 timeout: float = 600) -> bool:
    """Start a command and SIGKILL its process group as soon as ``trigger()`` is true; returns
    whether it was killed (False: it ended first)."""
    proc = _start(argv, log)
    t0 = time.perf_counter()
    while proc.poll() is None:
        if trigger() or time.perf_counter() - t0 > timeout:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            return proc.returncode == -signal.SIGKILL
        time.sleep(poll)
    return False


def after_marker(marker: Callable[[], bool], delay: float) -> Callable[[], bool]:
    """A trigger: ``delay`` seconds after ``marker()`` first holds."""
    seen: list[float] = []

    def trigger() -> bool:
        if not seen:
            if not marker():
                return False
            seen.append(time.perf_counter())
        return time.perf_counter() - seen[0] >= delay

    return trigger


def nth_temp_file(directory: Path, n: int) -> Callable[[], bool]:
    """A trigger: the moment the n-th distinct temporary file appears in ``directory`` (0-based)."""
    names: set[str] = set()

    def trigger() -> bool:
        try:
            with os.scandir(directory) as it:
                names.update(e.name for e in it if e.name.endswith(".tmp"))
        except FileNotFoundError:
            return False
        return len(names) > n

    return trigger


# --------------------------------------------------------------------------------- digests


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(root: Path, skip: Callable[[str], bool] = lambda rel: False) -> list[str]:
    """Relative paths of the files under ``root``."""
    out = []
    for p in root.rglob("*"):
        rel = str(p.relative_to(root))
        if p.is_file() and not skip(rel):
            out.append(rel)
    return sorted(out)


def _zarr_json(path: Path, volatile: tuple[str, ...]) -> Any:
    meta = json.loads(path.read_text())
    for key in volatile:
        *parents, leaf = key.split(".")
        d = meta.get("attributes") or {}
        for k in parents:
            d = d.get(k) if isinstance(d, dict) else None
        if isinstance(d, dict):
            d.pop(leaf, None)
    return meta


def store_digest(root: Path, files: list[str], volatile: tuple[str, ...] = (), by_name: tuple[str, ...] = ()) -> dict:
    """Bytes of every file (``zarr.json`` metadata as JSON without the ``volatile`` attrs; the
    files named in ``by_name`` only by their presence)."""
    out: dict[str, Any] = {}
    for rel in files:
        name = rel.rsplit("/", 1)[-1]
        if name in by_name:
            out[rel] = "present"
        elif name == "zarr.json":
            out[rel] = _zarr_json(root / rel, volatile)
        else:
            out[rel] = _sha(root / rel)
    return out


def _tensor_digest(obj: Any) -> Any:
    import torch

    if torch.is_tensor(obj):
        return hashlib.sha256(obj.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest() \
            if obj.numel() else ("empty", tuple(obj.shape))
    if isinstance(obj, dict):
        return {str(k): _tensor_digest(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_tensor_digest(v) for v in obj]
    return obj


def checkpoint_digest(path: Path) -> dict:
    import torch

    ck = torch.load(path, map_location="cpu", weights_only=True)
    return {k: _tensor_digest(ck.get(k)) for k in ("global_step", "epoch", "state_dict", "optimizer_states",
                                                      "current_model_state")}


def model_digest(path: Path) -> dict:
    """The tensors and the metadata of an exported model file."""
    from safetensors.torch import load_file

    from sns.export import read_metadata

    return {"tensors": _tensor_digest(load_file(path)), "metadata": read_metadata(path)}


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [k for k in (rows[0] if rows else {}) if k in ("step", "epoch") or "loss" in k]
    return [{k: r[k] for k in keep} for r in rows]


# --------------------------------------------------------------------------------- commands


class Command:
    """One command under test: how to run it on an output path, when its work has started,
    and what of its output must be identical."""

    name = ""
    poll = 0.005

    def __init__(self, work: Path, inputs: dict[str, Path]) -> None:
        self.work, self.inputs = work, inputs

    def argv(self, out: Path) -> list[str]:
        raise NotImplementedError

    def marker(self, out: Path) -> Callable[[], bool]:
        raise NotImplementedError

    def skip(self, rel: str) -> bool:
        return False

    def digest(self, out: Path) -> dict:
        raise NotImplementedError

    def temp_files(self, out: Path) -> list[str]:
        """Temporary files of writes in progress under ``out`` and next to it."""
        inside = [rel for rel in listing(out, self.skip) if _temp(rel)] if out.exists() else []
        return inside + sorted(p.name for p in out.parent.glob(f".{out.name}*") if _temp(p.name))

    def trigger(self, out: Path, rng: random.Random, span: float) -> Callable[[], bool]:
        # 0.8: the reference's span may have run on a busier machine; most kills should land
        return after_marker(self.marker(out), rng.uniform(0.0, 0.8 * span))


class Generate(Command):
    name = "generate"

    def argv(self, out):
        return ["sns.cli.generate", "system=lorenz63", "preset=cpu", f"out={out}", "overrides.n_frames=200",
                "overrides.spinup_steps=100", "overrides.trajectories.train=4", "overrides.trajectories.valid=2",
                "overrides.trajectories.test=2", "batch_size=1", "num_threads=1",
                f"hydra.run.dir={self.work / 'hydra' / out.name}"]

    def marker(self, out):
        return lambda: (out / ".generate.lock").exists()

    def digest(self, out):
        return store_digest(out, listing(out), by_name=(".generate.lock",))


class Train(Command):
    name = "train"

    def argv(self, out):
        return ["sns.cli.train", "experiment=lorenz63_cpu", f"paths.data_dir={self.inputs['data'].parent}",
                f"paths.run_dir={out}", "trainer.max_epochs=3", "trainer.limit_train_batches=8",
                "data.batch_size=16", "data.max_val_windows=16", "torch_threads=1", "model.surrogate.val_horizon=5",
                "+trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
                "callbacks.model_checkpoint.every_n_train_steps=3", "callbacks.model_checkpoint.monitor=null"]

    def marker(self, out):
        return lambda: (out / "csv").exists()

    def skip(self, rel):
        return rel.startswith(".hydra/") or rel.endswith(".log")

    def digest(self, out):
        files = listing(out, self.skip)
        d: dict[str, Any] = {"files": files}
        for rel in files:
            if rel.endswith(".ckpt"):
                d[rel] = checkpoint_digest(out / rel)
            elif rel.endswith("metrics.csv"):
                d[rel] = csv_rows(out / rel)
            elif rel.endswith(".safetensors"):  # not the bytes: safetensors orders the metadata at random
                d[rel] = model_digest(out / rel)
            elif rel.endswith("hparams.yaml"):
                d[rel] = _sha(out / rel)
        return d


class TrainCheckpoint(Train):
    name = "train-ckpt"
    poll = 0.0002  # a small checkpoint is written in milliseconds

    def __init__(self, work, inputs):
        super().__init__(work, inputs)
        self.writes = 1  # checkpoint temp files seen during the reference run (set by run_command)

    def trigger(self, out, rng, span):
        return nth_temp_file(out / "checkpoints", rng.randrange(self.writes))


class Rollout(Command):
    name = "rollout"
    VOLATILE = ("rollout_created", "rollout_checkpoint.wall_time_s")  # when it ran, how long it took

    def argv(self, out):
        return ["sns.cli.rollout", f"surrogate={self.inputs['surrogate']}", f"data_dir={self.inputs['data']}",
                "n_steps=1000", "chunk=8", "trajectories=2", "gaussian.sigma=0.05", "blowup_factor=1e6",
                "torch_threads=1", f"out={out}",
                f"hydra.run.dir={self.work / 'hydra' / out.name}"]

    def marker(self, out):
        return lambda: out.exists()

    def digest(self, out):
        return store_digest(out, listing(out), volatile=self.VOLATILE)


class RolloutCreate(Rollout):
    """The same rollout, killed the moment its store's temporary directory appears (the store is
    built in ``.<name>.partial-<hex>`` and renamed into place): a kill while it is created."""

    name = "rollout-create"
    poll = 0.0002

    def trigger(self, out, rng, span):
        return lambda: any(out.parent.glob(f".{out.name}.partial-*"))


# --------------------------------------------------------------------------------- driver


def prepare(work: Path) -> dict[str, Path]:
    """The inputs: a small Lorenz-63 data set and an exported surrogate (random weights)."""
    import torch

    from sns.data.generate import generate_dataset
    from sns.export import save_model
    from sns.training import build_model

    small = {"n_frames": 60, "spinup_steps": 50, "trajectories": {"train": 4, "valid": 2, "test": 2}}
    data = generate_dataset("lorenz63", "cpu", out=work / "inputs" / "lorenz63-cpu", overrides=small, progress=None)
    attrs = json.loads((data / "train.zarr" / "zarr.json").read_text())["attributes"]
    spec = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 16}}
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():  # not the identity (zero-initialised residual): a map that moves the state
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    sur = save_model(model, spec, work / "inputs" / "surrogate.safetensors",
                     {"task": "surrogate", "data": {k: attrs[k] for k in ("system", "norm_offset", "norm_scale")}})
    return {"data": data, "surrogate": sur}


def _diff(a: Any, b: Any, path: str = "") -> str:
    """The first difference between two digests (for the report)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}/{k}: only in {'reference' if k in a else 'trial'}"
            d = _diff(a[k], b[k], f"{path}/{k}")
            if d:
                return d
        return ""
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return ""
    return "" if a == b else f"{path}: {str(a)[:120]} vs {str(b)[:120]}"


def run_command(cmd: Command, n: int, kills: int, seed: int, log: Callable[[str], None] = print) -> list[Trial]:
    """The reference run and ``n`` trials of ``cmd``; returns the trials."""
    rng = random.Random(f"{seed}-{cmd.name}")
    logs = cmd.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ref = cmd.work / f"{cmd.name}-ref"
    marker = cmd.marker(ref)
    temps: set[str] = set()  # checkpoint temp files seen (train-ckpt draws which one to kill at)
    proc = _start(cmd.argv(ref), logs / f"{ref.name}.log")
    t_mark = None
    while proc.poll() is None:
        if t_mark is None and marker():
            t_mark = time.perf_counter()
        if isinstance(cmd, TrainCheckpoint) and (ref / "checkpoints").is_dir():
            temps.update(p.name for p in (ref / "checkpoints").glob("*.tmp"))
        time.sleep(cmd.poll)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd.name}: the reference run failed (exit {proc.returncode}); see {logs / ref.name}.log")
    span = time.perf_counter() - t_mark if t_mark is not None else 1.0
    if isinstance(cmd, TrainCheckpoint):
        cmd.writes = max(1, len(temps))
    reference = cmd.digest(ref)
    ref_files = set(listing(ref, cmd.skip))
    log(f"{cmd.name}: reference done ({span:.1f} s of work after the marker"
        + (f", {cmd.writes} checkpoint writes" if isinstance(cmd, TrainCheckpoint) else "") + ")")
    trials = []
    for k in range(n):
        out = cmd.work / f"{cmd.name}-{k}"
        t = Trial()
        for _ in range(kills):
            if run_and_kill(cmd.argv(out), logs / f"{out.name}.log", cmd.trigger(out, rng, span), cmd.poll):
                t.kills += 1
                t.in_write += bool(cmd.temp_files(out))
        code, _ = run_to_end(cmd.argv(out), logs / f"{out.name}.log")
        t.survived = code == 0
        files = set(listing(out, cmd.skip)) if out.exists() else set()
        # leaked: temporary files, and any file the reference does not have; lost: the reverse
        t.leaked = sorted(set(cmd.temp_files(out)) | (files - ref_files))
        t.lost = sorted(ref_files - files)
        if t.survived and not t.lost:
            d = _diff(reference, cmd.digest(out))
            t.identical, t.detail = not d, d
        else:
            t.detail = f"exit {code}" if not t.survived else f"lost {t.lost[:3]}"
        log(f"  {cmd.name} trial {k}: kills {t.kills} (in a write {t.in_write}), exit {code}, identical "
            f"{t.identical}, leaked {t.leaked[:3]}, lost {t.lost[:3]} {t.detail}")
        trials.append(t)
    return trials


def table(results: dict[str, list[Trial]]) -> str:
    lines = ["| command | trials | kills | in a write | survived | bit-identical | temp files leaked | data lost |",
             "|---|---|---|---|---|---|---|---|"]
    for name, trials in results.items():
        lines.append(f"| {name} | {len(trials)} | {sum(t.kills for t in trials)} | {sum(t.in_write for t in trials)} | "
                     f"{sum(t.survived for t in trials)} | {sum(t.identical for t in trials)} | "
                     f"{sum(len(t.leaked) for t in trials)} | {sum(bool(t.lost) or not t.survived for t in trials)} |")
    return "\n".join(lines)


CLASSES = {c.name: c for c in (Generate, Train, TrainCheckpoint, Rollout, RolloutCreate)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10, help="trials per command")
    ap.add_argument("--kills", type=int, default=1, help="kills per trial before the final run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commands", default=",".join(COMMANDS))
    ap.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: a temporary one)")
    args = ap.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="sns-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        inputs = prepare(work)
        results = {}
        for name in args.commands.split(","):
            results[name] = run_command(CLASSES[name](work, inputs), args.n, args.kills, args.seed)
        print(f"\n{table(results)}\n\n({time.perf_counter() - t0:.0f} s; seed {args.seed}, {args.kills} kill(s) per "
              f"trial)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    bad = [t for ts in results.values() for t in ts if not (t.survived and t.identical and not t.leaked)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
