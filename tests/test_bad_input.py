"""Bad command-line input (issue 16 item 9): every case is a one-line ``sns-<cmd>: error: ...``
(exit code 2) naming the key, with no traceback and nothing written beyond Hydra's own run
files (``.hydra/``, the job log)."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
import zarr

from sns.data.generate import generate_dataset
from sns.export import save_model
from sns.training import build_model

SMALL = {"n_frames": 40, "spinup_steps": 50, "trajectories": {"train": 2, "valid": 2, "test": 2}}
SPEC = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 8}}
TRAIN = ["experiment=lorenz63_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.batch_size=16",
         "data.max_val_windows=8", "torch_threads=1", "model.surrogate.val_horizon=5",
         "+trainer.enable_model_summary=false"]
HYDRA_FILES = {".hydra", "train.log", "rollout.log", "generate.log"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    data = generate_dataset("lorenz63", "cpu", out=root / "data" / "lorenz63-cpu", overrides=SMALL, progress=None)
    empty = root / "empty" / "lorenz63-cpu"  # the same data set with no valid trajectories
    shutil.copytree(data, empty)
    arr = zarr.open_group(str(empty / "valid.zarr"), mode="r+")["state"]
    arr.resize((0, *arr.shape[1:]))
    torch.manual_seed(0)
    sur = save_model(build_model(SPEC), SPEC, root / "s.safetensors", {"task": "surrogate", "data": {"system": "lorenz63"}})
    cut = root / "cut.safetensors"
    cut.write_bytes(sur.read_bytes()[:100])
    (root / "zero.safetensors").write_bytes(b"")
    return {"data": data, "empty": empty, "sur": sur, "cut": cut, "zero": root / "zero.safetensors",
            "root": root}


def _train(f, run, *extra):
    return ("sns.cli.train", [*TRAIN, f"paths.data_dir={f['data'].parent}", f"paths.run_dir={run}", *extra])


def _roll(f, run, *extra, surrogate="sur"):
    return ("sns.cli.rollout", [f"surrogate={f[surrogate]}", f"data_dir={f['data']}", "n_steps=4", "trajectories=1",
                                "torch_threads=1", f"out_root={run}/rollouts", f"hydra.run.dir={run}", *extra])


CASES = {  # id -> (command(files, run dir), what the message must name)
    "train max_epochs": (lambda f, r: _train(f, r, "trainer.max_epochs=abc"), "trainer.max_epochs"),
    "train lr": (lambda f, r: _train(f, r, "model.surrogate.module.optimizer.lr=abc"),
                 "model.surrogate.module.optimizer.lr"),
    "train seed": (lambda f, r: _train(f, r, "seed=abc"), "seed must be an integer, got 'abc'"),
    "train empty split": (lambda f, r: _train(f, r, f"paths.data_dir={f['empty'].parent}"), "split 'valid'"),
    "rollout empty split": (lambda f, r: _roll(f, r, f"data_dir={f['empty']}", "split=valid"), "split 'valid'"),
    "rollout truncated file": (lambda f, r: _roll(f, r, surrogate="cut"), "cut.safetensors: truncated"),
    "rollout empty file": (lambda f, r: _roll(f, r, surrogate="zero"), "zero.safetensors: empty file"),
    "rollout seed": (lambda f, r: _roll(f, r, "seed=abc"), "seed must be an integer, got 'abc'"),
    "rollout n_steps": (lambda f, r: _roll(f, r, "n_steps=abc"), "n_steps must be an integer, got 'abc'"),
    "generate seed": (lambda f, r: ("sns.cli.generate", ["system=lorenz63", f"out={r}/data", "seed=abc",
                                                         f"hydra.run.dir={r}"]), "seed must be an integer"),
}
if not torch.cuda.is_available():
    CASES["rollout cuda"] = (lambda f, r: _roll(f, r, "device=cuda"), "no CUDA device is available")
    CASES["train gpu"] = (lambda f, r: _train(f, r, "trainer.accelerator=gpu"), "no CUDA device is available")


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_a_one_line_error(files, tmp_path, monkeypatch, capsys, case):
    import importlib

    make, key = CASES[case]
    run = tmp_path / "run"
    module, args = make(files, run)
    before = _tree(files["root"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [module, *args])
    n = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exc:
            importlib.import_module(module).main()
    finally:
        torch.set_num_threads(n)
    err = capsys.readouterr().err
    cmd = "sns-" + module.rsplit(".", 1)[1]
    assert exc.value.code == 2, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{cmd}: error: ")]
    assert len(lines) == 1 and key in lines[0], err[-3000:]
    assert "Traceback" not in err
    # nothing written: only Hydra's own run files in the run dir, the fixtures untouched
    assert {p.split("/")[0] for p in _tree(run)} <= HYDRA_FILES, _tree(run)
    assert set(tmp_path.iterdir()) <= {run}
    assert _tree(files["root"]) == before
