"""File-level reliability (issue 16): sns-generate finishes the renames of a killed run and
locks its output; load_model checks a model file against its spec before building anything."""

import json
import os
import struct

import pytest
import torch

from sns.data import generate as gen
from sns.data.generate import generate_dataset

SMALL = {"n_frames": 20, "spinup_steps": 20, "trajectories": {"train": 2, "valid": 1, "test": 1}}


def _gen(out, **kw):
    return generate_dataset("lorenz63", "cpu", out=out, overrides=SMALL, progress=None, **kw)


def _killed_between_renames(out, **kw):
    """The state a kill between the final renames leaves: train renamed, the other splits still
    complete ``.partial`` stores (what ``_finalise`` had not renamed yet)."""
    _gen(out, **kw)
    for s in ("valid", "test"):
        os.rename(out / f"{s}.zarr", out / f"{s}.zarr.partial")


def test_generate_finishes_renames_after_a_kill(tmp_path):
    import xarray as xr

    ref = _gen(tmp_path / "ref")
    out = tmp_path / "ds"
    _killed_between_renames(out)
    assert _gen(out) == out  # finishes instead of "already holds a data set"
    for s in ("train", "valid", "test"):
        assert (out / f"{s}.zarr").exists() and not (out / f"{s}.zarr.partial").exists()
        a = xr.open_zarr(out / f"{s}.zarr", consolidated=False)
        b = xr.open_zarr(ref / f"{s}.zarr", consolidated=False)
        assert a.attrs["norm_scale"] == b.attrs["norm_scale"]
        assert (a["state"].values == b["state"].values).all()
    with pytest.raises(FileExistsError, match="already holds a data set"):
        _gen(out)  # complete now: refused as before


def test_generate_does_not_finish_another_runs_partials(tmp_path):
    out = tmp_path / "ds"
    _killed_between_renames(out)
    with pytest.raises(FileExistsError, match=r"train\.zarr differs in seed"):
        _gen(out, seed=5)
    assert (out / "valid.zarr.partial").exists()  # refused: nothing touched


def test_concurrent_generate_on_one_output_is_refused(tmp_path):
    from sns.data.generate import GenerationLocked

    out = tmp_path / "ds"
    out.mkdir()
    with gen._exclusive(out / ".generate.lock"):  # another run holds the output
        with pytest.raises(GenerationLocked, match=r"another sns-generate is writing .*ds"):
            _gen(out)
        assert not (out / "train.zarr.partial").exists()
    assert (_gen(out) / "train.zarr").exists()  # released: runs


# --------------------------------------------------------------------------- load_model

SPEC = {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 8}}


def _model_file(tmp_path, spec_in_file=None, metadata=None, name="m.safetensors"):
    """A tiny residual_mlp's weights, with any model spec / metadata written next to them."""
    from safetensors.torch import save_file

    from sns.training import build_model, resolve_spec

    state = {k: v.contiguous() for k, v in build_model(SPEC).state_dict().items()}
    meta = {"sns_format": "1", "sns_model": json.dumps(resolve_spec(spec_in_file or SPEC)),
            "sns_extra": json.dumps({"task": "surrogate"}), **(metadata or {})}
    save_file(state, str(tmp_path / name), metadata=meta)
    return tmp_path / name


def test_load_model_checks_the_spec_against_the_tensors_before_building(tmp_path, monkeypatch):
    """A small file whose spec claims width=32000 is refused without building that network."""
    from sns import export

    path = _model_file(tmp_path, {"kind": "residual_mlp", "kwargs": {"dim": 3, "width": 32000}})
    assert path.stat().st_size < 2000
    devices = []
    real = export.build_model

    def spy(spec):
        devices.append(torch.get_default_device().type)
        return real(spec)

    monkeypatch.setattr(export, "build_model", spy)
    with pytest.raises(ValueError, match=r"m\.safetensors: the weights do not match the model spec.*spec \(32000, 3\) "
                                         r"vs file \(8, 3\)"):
        export.load_model(path)
    assert devices == ["meta"]  # only the allocation-free build ran
    _, extra = export.load_model(_model_file(tmp_path, name="ok.safetensors"))
    assert extra == {"task": "surrogate"} and devices == ["meta", "meta", "cpu"]


def test_load_model_bounds_the_header(tmp_path):
    from sns.export import MAX_HEADER_BYTES, load_model

    path = _model_file(tmp_path, metadata={"junk": "x" * (MAX_HEADER_BYTES + 1)})
    with pytest.raises(ValueError, match=r"m\.safetensors: safetensors header of \d+ bytes exceeds the limit"):
        load_model(path)
    # a length field that promises a 60 MB header in a tiny file
    (tmp_path / "liar.safetensors").write_bytes(struct.pack("<Q", 60_000_000) + b"{}")
    with pytest.raises(ValueError, match=r"liar\.safetensors: safetensors header of 60000000 bytes"):
        load_model(tmp_path / "liar.safetensors")


def test_load_model_refuses_deeply_nested_json(tmp_path):
    from sns.export import load_model

    deep = "[" * 100_000 + "]" * 100_000
    path = _model_file(tmp_path, metadata={"sns_model": deep})
    with pytest.raises(ValueError, match=r"m\.safetensors: the sns_model metadata is nested too deeply"):
        load_model(path)
    body = ('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "x": ' + deep + "}").encode()
    (tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 4)
    with pytest.raises(ValueError, match=r"h\.safetensors: the safetensors header is nested too deeply"):
        load_model(tmp_path / "h.safetensors")


@pytest.mark.parametrize("keep", [0, 5, 100, -8], ids=["empty", "5 bytes", "in the header", "in the data"])
def test_load_model_names_truncated_files(tmp_path, keep):
    from sns.export import load_model

    path = _model_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(ValueError, match=r"m\.safetensors: (empty file|truncated)"):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="nothere.safetensors does not exist"):
        load_model(tmp_path / "nothere.safetensors")
