"""The bad-input table (issue 16, "nothing lost, nothing mixed, nothing executed").

One row per bad input a user would try on sns-generate, sns-train, sns-rollout, sns-evaluate and
the library loaders.  Every row checks three things:

* the error is clear: a CLI prints exactly one ``sns-<cmd>: error: ...`` line (exit code 2, no
  traceback) that names the offending key or file and, where there is a fixed set, the valid
  choices; a config-group or struct error is Hydra's own message (exit code 1, no traceback),
  which names the key and lists the available options; a library loader raises ``ValueError`` /
  ``FileNotFoundError`` naming the file;
* nothing was written: the run directory holds only Hydra's own files (``.hydra/``, the job log),
  so no ``csv/version_0``, checkpoint, rollout store, data set or report; nothing appears next
  to it;
* nothing was deleted or changed: every file of the fixtures (data sets, model files) has the
  same bytes afterwards (SHA-256 of every file, and the directory listing).

The CLIs run in-process (``main()`` with ``sys.argv``), on a 2-trajectory Lorenz-63 data set.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch
import zarr

from sns.data.generate import generate_dataset
from sns.export import save_model
from sns.training import build_model, resolve_spec

SMALL = {"n_frames": 40, "spinup_steps": 50, "trajectories": {"train": 2, "valid": 2, "test": 2}}
TINY = {"n_frames": 12, "spinup_steps": 10, "trajectories": {"train": 1, "valid": 1, "test": 1}}
SPEC = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 8}}
DEN_SPEC = {"kind": "mlp_pair", "kwargs": {"dim": 3, "n_levels": 10, "width": 16}}
TRAIN = ["experiment=lorenz63_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.batch_size=16",
         "data.max_val_windows=8", "torch_threads=1", "model.surrogate.val_horizon=5",
         "+trainer.enable_model_summary=false"]
HYDRA_FILES = {".hydra", "train.log", "rollout.log", "generate.log", "evaluate.log", "hydra"}


def _norm(data: Path) -> dict:
    attrs = zarr.open_group(str(data / "train.zarr"), mode="r").attrs
    return {k: attrs[k] for k in ("system", "norm_offset", "norm_scale")}


def _empty_copy(data: Path, out: Path, split: str) -> Path:
    shutil.copytree(data, out)
    arr = zarr.open_group(str(out / f"{split}.zarr"), mode="r+")["state"]
    arr.resize((0, *arr.shape[1:]))
    return out


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    """Fixtures: data sets, model files good and bad.  Returns name -> path."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("bad")
    data = generate_dataset("lorenz63", "cpu", out=root / "data" / "lorenz63-cpu", overrides=SMALL, progress=None)
    l96 = generate_dataset("lorenz96", "cpu", out=root / "l96" / "lorenz96-cpu", overrides=TINY, progress=None)
    files = {"root": root, "data": data, "l96": l96,
             "empty_valid": _empty_copy(data, root / "empty_valid" / "lorenz63-cpu", "valid"),
             "empty_train": _empty_copy(data, root / "empty_train" / "lorenz63-cpu", "train")}
    notsns = root / "notsns" / "lorenz63-cpu"  # zarr stores, but not sns data sets
    notsns.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        zarr.open_group(str(notsns / f"{split}.zarr"), mode="w").create_array("x", shape=(2,), dtype="f4")
    files["notsns"] = notsns
    torch.manual_seed(0)
    files["sur"] = save_model(build_model(SPEC), SPEC, root / "sur.safetensors",
                              {"task": "surrogate", "data": _norm(data)})
    files["den"] = save_model(build_model(DEN_SPEC), DEN_SPEC, root / "den.safetensors",
                              {"task": "denoiser", "method": "sns", "data": _norm(data),
                               "schedule": {"name": "cosine", "n_levels": 10, "kwargs": {}}})
    s96 = {"kind": "residual_mlp", "kwargs": {"dim": 40, "width": 8}}
    files["sur96"] = save_model(build_model(s96), s96, root / "sur96.safetensors",
                                {"task": "surrogate", "data": _norm(l96)})
    s5 = {"kind": "residual_mlp", "kwargs": {"dim": 5, "width": 8}}  # no data metadata: only its shape tells
    files["sur5"] = save_model(build_model(s5), s5, root / "sur5.safetensors", {"task": "surrogate"})
    good = files["sur"].read_bytes()
    for name, content in (("cut", good[:100]), ("zero", b""),
                          ("random", random.Random(0).randbytes(4096))):
        (root / f"{name}.safetensors").write_bytes(content)
        files[name] = root / f"{name}.safetensors"
    (root / "random.ckpt").write_bytes(random.Random(1).randbytes(4096))
    files["random_ckpt"] = root / "random.ckpt"
    state = {k: v.contiguous() for k, v in build_model(SPEC).state_dict().items()}
    huge = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 10**9}}  # 4e18 bytes if it were built
    save_file(state, str(root / "huge.safetensors"),
              metadata={"sns_format": "1", "sns_model": json.dumps(resolve_spec(huge)),
                        "sns_extra": json.dumps({"task": "surrogate"})})
    save_file(state, str(root / "plain.safetensors"))  # a safetensors file, not an sns model file
    files["huge"], files["plain"] = root / "huge.safetensors", root / "plain.safetensors"
    files["missing"] = root / "nothere.safetensors"
    files["missing_dir"] = root / "nothere" / "lorenz63-cpu"
    return files


# ----------------------------------------------------------------------------------- commands


def gen(*extra):
    return lambda f, r: ("sns.cli.generate", [
        "system=lorenz63", f"out={r}/data", "overrides.n_frames=10", "overrides.spinup_steps=5",
        "overrides.trajectories.train=1", "overrides.trajectories.valid=1", "overrides.trajectories.test=1",
        f"hydra.run.dir={r}", *[e(f) if callable(e) else e for e in extra]])


def train(*extra, data="data"):
    return lambda f, r: ("sns.cli.train", [*TRAIN, f"paths.data_dir={f[data].parent}", f"paths.run_dir={r}",
                                           *[e(f) if callable(e) else e for e in extra]])


def roll(*extra, surrogate="sur", data="data"):
    def make(f, r):
        sur = f"surrogate={f[surrogate]}" if surrogate else "surrogate=null"
        return ("sns.cli.rollout", [sur, f"data_dir={f[data]}", "n_steps=4", "trajectories=1", "torch_threads=1",
                                    f"out_root={r}/rollouts", f"hydra.run.dir={r}",
                                    *[e(f) if callable(e) else e for e in extra]])
    return make


def sns(*extra, **kw):
    return roll(lambda f: f"denoiser={f['den']}", *extra, **kw)


def evaluate(*extra, reference=lambda f: f"reference={f['data'] / 'test.zarr'}"):
    extra = (reference, *extra) if reference else extra
    return lambda f, r: ("sns.cli.evaluate", [f"out_dir={r}/report", f"hydra.run.dir={r}/hydra",
                                              *[e(f) if callable(e) else e for e in extra]])


def rollouts(key):
    return lambda f: f"+rollouts.a={f[key] / 'test.zarr'}" if key in ("data", "l96") else f"+rollouts.a={f[key]}"


def lib(fn):
    return lambda f, r: ("lib", fn(f))


def load(key):
    from sns.export import load_model

    return lib(lambda f: lambda: load_model(f[key]))


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available here")
# id -> (command, what the message must contain); "hydra:" ids are Hydra's own config errors
ROWS = [
    # ------------------------------------------------------------------ sns-generate
    ("generate seed=abc", gen("seed=abc"), ["seed must be an integer, got 'abc'"]),
    ("generate system=foo", gen("system=foo"), ["hydra:", "Could not find 'system/foo'", "lorenz63", "kolmogorov"]),
    ("generate preset=foo", gen("preset=foo"), ["unknown preset 'foo'", "valid choices: ['cpu', 'paper']"]),
    ("generate n_frames=abc", gen("overrides.n_frames=abc"), ["n_frames must be a positive integer, got 'abc'"]),
    ("generate batch_size=0", gen("batch_size=0"), ["batch_size must be >= 1, got 0"]),
    ("generate zero train trajectories", gen("overrides.trajectories.train=0"),
     ["the train split needs at least one trajectory"]),
    ("generate shard out of range", gen("shard.index=5", "shard.count=2"), ["shard index must be in [0, 2), got 5"]),
    ("generate unknown preset field", gen("+overrides.foo=1"), ["unknown preset fields ['foo']", "valid choices"]),
    ("generate dtype=float16", gen("system.dtype=float16"), ["unknown dtype 'float16'",
                                                             "valid choices: ['float32', 'float64']"]),
    ("generate unknown param", gen("system.params.sigma=abc"), ["hydra:", "system.params.sigma"]),
    pytest.param("generate device=cuda", gen("device=cuda"), ["device=cuda: no CUDA device is available"],
                 marks=NO_CUDA),
    ("generate device=foo", gen("device=foo"), ["device=foo is not a torch device", "valid choices"]),
    ("generate existing data set", lambda f, r: ("sns.cli.generate", ["system=lorenz63", f"out={f['data']}",
                                                                       f"hydra.run.dir={r}"]),
     ["lorenz63-cpu already holds a data set", "overwrite=true"]),
    # ------------------------------------------------------------------ sns-train
    ("train trainer.max_epochs=abc", train("trainer.max_epochs=abc"), ["trainer.max_epochs must be an integer"]),
    ("train trainer.max_steps=-5", train("trainer.max_steps=-5"), ["trainer:", "max_steps", "-5"]),
    ("train optimizer.lr=abc", train("model.surrogate.module.optimizer.lr=abc"),
     ["model.surrogate.module.optimizer.lr must be a number, got 'abc'"]),
    ("train optimizer.lr=-1", train("model.surrogate.module.optimizer.lr=-1"),
     ["model.surrogate.module.optimizer.lr must be >= 0"]),
    ("train seed=abc", train("seed=abc"), ["seed must be an integer, got 'abc'"]),
    ("train data.batch_size=0", train("data.batch_size=0"), ["data:", "batch_size", "got 0"]),
    ("train data.num_workers=abc", train("data.num_workers=abc"), ["data:", "num_workers", "'abc'"]),
    ("train task=foo", train("task=foo"), ["unknown task 'foo'", "valid choices: ['surrogate', 'denoiser'"]),
    ("train system=foo", train("system=foo"), ["hydra:", "Could not find 'system/foo'", "lorenz63"]),
    ("train experiment=foo", train("experiment=foo"), ["hydra:", "Could not find 'experiment/foo'", "lorenz63_cpu"]),
    ("train logger=foo", train("logger=foo"), ["hydra:", "Could not find 'logger/foo'", "csv"]),
    ("train preset=foo (no such data set)", train("preset=foo"), ["lorenz63-foo/train.zarr does not exist"]),
    ("train missing data_dir", train(data="missing_dir"), ["nothere/lorenz63-cpu/train.zarr does not exist"]),
    ("train data_dir not an sns data set", train(data="notsns"), ["notsns/lorenz63-cpu/train.zarr is not an sns data set"]),
    ("train zero valid trajectories", train(data="empty_valid"), ["split 'valid'", "has no trajectories"]),
    ("train zero train trajectories", train(data="empty_train"), ["split 'train'", "has no trajectories"]),
    ("train data of another system", train(lambda f: f"data.data_dir={f['l96']}"),
     ["model.surrogate (residual_mlp)", "lorenz96-cpu", "shape (40,)"]),
    pytest.param("train accelerator=gpu", train("trainer.accelerator=gpu"),
                 ["trainer.accelerator=gpu: no CUDA device is available"], marks=NO_CUDA),
    ("train ckpt_path missing", train("ckpt_path=/nonexistent.ckpt"),
     ["ckpt_path '/nonexistent.ckpt' is not a file", "valid choices"]),
    ("train ckpt_path random bytes", train(lambda f: f"ckpt_path={f['random_ckpt']}"),
     ["random.ckpt: truncated or corrupt checkpoint"]),
    ("train ckpt_path random .safetensors", train(lambda f: f"ckpt_path={f['random']}"),
     ["random.safetensors: truncated or corrupt checkpoint"]),
    ("train ckpt_path = exported model", train(lambda f: f"ckpt_path={f['sur']}"),
     ["sur.safetensors: not a Lightning checkpoint"]),
    # ------------------------------------------------------------------ sns-rollout
    ("rollout n_steps=abc", roll("n_steps=abc"), ["n_steps must be an integer, got 'abc'"]),
    ("rollout n_steps=-1", roll("n_steps=-1"), ["n_steps must be an integer >= 1, got -1"]),
    ("rollout seed=abc", roll("seed=abc"), ["seed must be an integer, got 'abc'"]),
    ("rollout chunk=0", roll("chunk=0"), ["chunk must be an integer >= 1, got 0"]),
    ("rollout ensemble=0", roll("ensemble=0"), ["ensemble must be an integer >= 1"]),
    ("rollout on_failure=skip", roll("on_failure=skip"), ["on_failure must be one of", "'skip'"]),
    ("rollout precision=int8", roll("precision=int8"), ["precision must be one of", "'int8'"]),
    ("rollout trajectories=99", roll("trajectories=99"), ["trajectories must be in [1, 2]", "test.zarr", "99"]),
    ("rollout start_frame=-1", roll("start_frame=-1"), ["start_frame must be in [0, 38], got -1"]),
    ("rollout gaussian.sigma=abc", roll("gaussian.sigma=abc"), ["gaussian.sigma must be a number"]),
    ("rollout split=foo", roll("split=foo"), ["unknown split 'foo'", "valid choices: ['train', 'valid', 'test']"]),
    ("rollout no data_dir", lambda f, r: ("sns.cli.rollout", [f"surrogate={f['sur']}", f"out_root={r}/rollouts",
                                                              f"hydra.run.dir={r}"]),
     ["missing mandatory setting(s) data_dir"]),
    ("rollout missing data_dir", roll(lambda f: f"data_dir={f['root'] / 'nothere'}"),
     ["no data set store at", "nothere/test.zarr"]),
    ("rollout data_dir not an sns data set", roll(data="notsns"), ["notsns/lorenz63-cpu/test.zarr is not an sns data"]),
    ("rollout zero trajectories", roll("split=valid", data="empty_valid"), ["split 'valid'", "has no trajectories"]),
    ("rollout nothing to roll out", roll(surrogate=None), ["nothing to roll out: give surrogate=<file>"]),
    ("rollout missing model file", roll(surrogate="missing"), ["model file", "nothere.safetensors does not exist"]),
    ("rollout truncated model file", roll(surrogate="cut"), ["cut.safetensors: truncated"]),
    ("rollout empty model file", roll(surrogate="zero"), ["zero.safetensors: empty file"]),
    ("rollout random-bytes model file", roll(surrogate="random"), ["random.safetensors: safetensors header of",
                                                                   "exceeds the limit"]),
    ("rollout spec claims a huge width", roll(surrogate="huge"),
     ["huge.safetensors: the weights do not match the model spec", "spec (1000000000, 3) vs file (8, 3)"]),
    ("rollout plain safetensors file", roll(surrogate="plain"), ["plain.safetensors is not an sns model file"]),
    ("rollout denoiser as surrogate", roll(surrogate="den"), ["den.safetensors holds a 'denoiser' model",
                                                              "expected a surrogate"]),
    ("rollout surrogate as denoiser", roll(lambda f: f"denoiser={f['sur']}"),
     ["sur.safetensors holds a 'surrogate' model", "expected a diffusion model"]),
    ("rollout model of another system", roll(surrogate="sur96"),
     ["sur96.safetensors was trained on data with system='lorenz96'", "system='lorenz63'"]),
    ("rollout model of another dimension", roll(surrogate="sur5"),
     ["surrogate", "sur5.safetensors does not fit the states of data set", "shape (3,)"]),
    pytest.param("rollout device=cuda", roll("device=cuda"), ["device=cuda: no CUDA device is available"],
                 marks=NO_CUDA),
    ("rollout device=foo", roll("device=foo"), ["device=foo is not a torch device"]),
    ("rollout out=data split, overwrite", roll(lambda f: f"out={f['data'] / 'test.zarr'}", "overwrite=true"),
     ["refuses to delete", "test.zarr: it is a data-set split"]),
    ("rollout out=data split", roll(lambda f: f"out={f['data'] / 'test.zarr'}"),
     ["test.zarr is a zarr store not written by sns.rollout"]),
    ("rollout out=data set dir, overwrite", roll(lambda f: f"out={f['data']}", "overwrite=true"),
     ["refuses to delete", "lorenz63-cpu: it is not a zarr store"]),
    ("rollout out=model file, overwrite", roll(lambda f: f"out={f['sur']}", "overwrite=true"),
     ["refuses to delete", "sur.safetensors: it is not a zarr store"]),
    ("rollout refiner.path=Z", sns("refiner.path=Z"), ["unknown path 'Z'", "['A', 'B', 'C', 'fix_s2']"]),
    ("rollout refiner.fixed_levels out of range", sns("refiner.fixed_levels=[0,99]"),
     ["fixed_levels must be two integer levels (i2, i1) in [0, 10), got (0, 99)"]),
    ("rollout refiner.fixed_levels=[0,abc]", sns("refiner.fixed_levels=[0,abc]"),
     ["refiner.fixed_levels must be two integer table levels"]),
    ("rollout refiner.proposal_sigma=abc", sns("refiner.proposal_sigma=abc"),
     ["refiner.proposal_sigma must be a number or 'auto'"]),
    ("rollout refiner.eta=abc", sns("refiner.eta=abc"), ["refiner.eta must be a number, got 'abc'"]),
    ("rollout refiner.clamp=abc", sns("refiner.clamp=abc"), ["refiner.clamp must be a number, got 'abc'"]),
    ("rollout refiner.state_guard=5", sns("refiner.state_guard=5"),
     ["refiner.state_guard must be true, false or a quantile in (0, 1], got 5"]),
    ("rollout refiner.foo (typo)", sns("refiner.foo=1"), ["hydra:", "refiner.foo"]),
    ("rollout thermalizer.start=abc", sns("thermalizer.start=abc"), ["thermalizer.start must be an integer"]),
    # ------------------------------------------------------------------ sns-evaluate
    ("evaluate no reference", evaluate(rollouts("data"), reference=None),
     ["missing mandatory setting(s) reference"]),
    ("evaluate missing reference store", evaluate(rollouts("data"), reference=lambda f: f"reference={f['root']}/no.zarr"),
     ["store", "no.zarr does not exist"]),
    ("evaluate missing rollout store", evaluate(lambda f: f"+rollouts.a={f['root']}/no.zarr"),
     ["store", "no.zarr does not exist"]),
    ("evaluate no rollouts", evaluate(), ["no rollouts to evaluate"]),
    ("evaluate reference not a store", evaluate(rollouts("data"), reference=lambda f: f"reference={f['sur']}"),
     ["sur.safetensors is not a data-set split or rollout store"]),
    ("evaluate reference not an sns store",
     evaluate(rollouts("data"), reference=lambda f: f"reference={f['notsns'] / 'train.zarr'}"),
     ["notsns/lorenz63-cpu/train.zarr is not a data-set split or rollout store"]),
    ("evaluate zero trajectories", evaluate(rollouts("data"),
                                            reference=lambda f: f"reference={f['empty_valid'] / 'valid.zarr'}"),
     ["valid.zarr: variable 'state' of shape (0, 40, 3) holds no states"]),
    ("evaluate rollout of another system", evaluate(rollouts("l96")), ["rollout 'a' has states of shape (40,)",
                                                                      "the reference (3,)"]),
    ("evaluate options.burn=abc", evaluate(rollouts("data"), "options.burn=abc"), ["burn must be a non-negative"]),
    ("evaluate options.burn=-1", evaluate(rollouts("data"), "options.burn=-1"), ["burn must be a non-negative"]),
    ("evaluate unknown option", evaluate(rollouts("data"), "+options.foo=1"),
     ["unknown options options.foo", "valid choices: ['chunk', 'burn'"]),
    # ------------------------------------------------------------------ library loaders
    ("load_model missing file", load("missing"), ["nothere.safetensors does not exist"]),
    ("load_model truncated file", load("cut"), ["cut.safetensors: truncated"]),
    ("load_model empty file", load("zero"), ["zero.safetensors: empty file"]),
    ("load_model random bytes", load("random"), ["random.safetensors: safetensors header of"]),
    ("load_model huge width (refused before allocating)", load("huge"),
     ["huge.safetensors: the weights do not match", "spec (1000000000, 1000000000) vs file (8, 8)"]),
    ("load_model plain safetensors", load("plain"), ["plain.safetensors is not an sns model file"]),
    ("SNSRefiner.from_file on a surrogate", lib(lambda f: lambda: __import__("sns").SNSRefiner.from_file(
        f["sur"], lambda u: u)), ["sur.safetensors holds a model with task='surrogate'"]),
    ("open_dataset split=foo", lib(lambda f: lambda: __import__("sns.data.io", fromlist=["x"]).open_dataset(
        f["data"], "foo")), ["unknown split 'foo'", "valid choices: ['train', 'valid', 'test']"]),
    ("read_checkpoint on a model file", lib(lambda f: lambda: __import__(
        "sns.training.checkpoint_io", fromlist=["x"]).read_checkpoint(f["sur"])),
     ["sur.safetensors: not a Lightning checkpoint"]),
]


def _row_id(row) -> str:
    return row.values[0] if hasattr(row, "values") else row[0]


def _snapshot(path: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file ("dir" for directories) under ``path``."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def before(f):
    return _snapshot(f["root"])


@pytest.mark.parametrize(("case", "make", "expected"), ROWS, ids=[_row_id(r) for r in ROWS])
def test_bad_input(f, before, tmp_path, monkeypatch, capsys, case, make, expected):
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    module, args = make(f, run)
    if module == "lib":
        with pytest.raises((ValueError, FileNotFoundError)) as err:
            args()
        message = str(err.value)
        assert all(e in message for e in expected), message
    else:
        monkeypatch.setattr(sys, "argv", [module, *args])
        n = torch.get_num_threads()
        try:
            with pytest.raises(SystemExit) as exc:
                importlib.import_module(module).main()
        finally:
            torch.set_num_threads(n)
        err = capsys.readouterr().err
        assert "Traceback" not in err, err[-3000:]
        if expected[0] == "hydra:":  # Hydra's own config error: before main's body runs
            assert exc.value.code == 1, err[-3000:]
            assert all(e in err for e in expected[1:]), err[-3000:]
        else:
            cmd = "sns-" + module.rsplit(".", 1)[1]
            assert exc.value.code == 2, err[-3000:]
            lines = [ln for ln in err.splitlines() if ln.startswith(f"{cmd}: error: ")]
            assert len(lines) == 1, err[-3000:]
            assert all(e in lines[0] for e in expected), lines[0]
    # nothing written: Hydra's own run files at most, nothing next to the run directory
    written = sorted(p.name for p in run.iterdir()) if run.exists() else []
    assert set(written) <= HYDRA_FILES, written
    assert not (run / "csv").exists() and not (run / "checkpoints").exists()
    assert not any(run.rglob("*.zarr")) and not (run / "report").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["run"])
    # nothing deleted or changed: every fixture file has its bytes
    assert _snapshot(f["root"]) == before


def test_the_table_covers_every_command():
    """The table has rows for every command and the loaders (a guard against the table shrinking)."""
    ids = [_row_id(r) for r in ROWS]
    for prefix, least in (("generate", 10), ("train", 20), ("rollout", 30), ("evaluate", 10)):
        assert sum(i.startswith(prefix) for i in ids) >= least, prefix
    assert sum(i.startswith(("load_model", "SNSRefiner", "open_dataset", "read_checkpoint")) for i in ids) >= 8
    assert len(ids) == len(set(ids))
