"""Inference artifacts: model weights in safetensors with the model spec in the metadata.

Training artifacts (Lightning checkpoints: optimizer, schedulers, EMA state; for resume)
and inference artifacts (this module) are separate.  An exported file is a plain
safetensors file whose string metadata holds

* ``sns_format``: format version (``"1"``);
* ``sns_model``: the *resolved* model spec as JSON (:func:`sns.models.resolve_spec`),
  enough to rebuild the network with :func:`sns.models.build_model`;
* ``sns_extra``: JSON of everything else inference needs (``task``; for denoisers the
  noise ``schedule`` ``{"name", "n_levels", "kwargs"}``; the data normalisation
  ``norm_offset``/``norm_scale``, ``system``...).

Loading never unpickles anything: safetensors holds tensors only, the spec is JSON.  Before
anything is built, :func:`load_model` reads the header itself (bounded by
:data:`MAX_HEADER_BYTES`, every tensor's byte range inside the file) and checks the spec against
the tensors' names and shapes (the network built on the ``meta`` device, no memory), so a
truncated, empty or crafted file is a ``ValueError`` naming it, never a huge allocation.
When the file is written from a module trained with ``EMAWeightAveraging``, the weights
are the EMA weights (after ``fit`` the module holds them; in a checkpoint they are
``state_dict``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sns.models import build_model, resolve_spec

__all__ = [
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "check_spec",
    "export_checkpoint",
    "file_sha256",
    "load_model",
    "load_schedule",
    "read_header",
    "read_metadata",
    "save_model",
]

FORMAT_VERSION = "1"


def save_model(model: nn.Module, spec: Mapping[str, Any], path: str | os.PathLike,
               extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and ``spec`` (resolved here) to ``path`` (atomically).

    Args:
        model: the network built from ``spec``.
        spec: its model spec.
        path: output ``.safetensors`` file.
        extra: JSON-serialisable metadata (task, schedule, normalisation, ...).
    """
    resolved = resolve_spec(spec)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"sns_format": FORMAT_VERSION, "sns_model": json.dumps(resolved),
            "sns_extra": json.dumps(dict(extra or {}))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    _canonical_header(tmp)
    os.replace(tmp, path)
    return path


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys, in place.

    safetensors writes its header from hash maps, so two saves of the same weights and metadata
    differ in key order, hence in bytes and SHA-256 (the rollout run identity hashes model files:
    a re-export of identical weights would then refuse to resume).  The sorted compact JSON has
    exactly the same length (the same tokens), so the padding and the tensor offsets stay valid.
    """
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        text = raw.decode("utf-8")
        body = text.rstrip(" ")
        canon = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        new = canon.encode("utf-8")
        if len(new) != len(body.encode("utf-8")):  # not the compact form this was written for: leave it
            return
        f.seek(8)
        f.write(new + raw[len(new):])


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks): what identifies a model file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Largest safetensors header (JSON: tensor table + metadata) accepted.  Exported sns files have
#: headers of a few to a few hundred KiB; a bigger one is not an sns file (or a hostile one).
MAX_HEADER_BYTES = 8 << 20

_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _json(text: str | bytes, path: Path, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{path}: {what} is nested too deeply; not an sns model file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: {what} is not valid JSON ({err}); corrupt or not an sns model file") from None


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The safetensors header of ``path`` (``{name: {"dtype", "shape", "data_offsets"}}`` plus
    ``"__metadata__"``), read and checked without loading any tensor.

    Checks: the file is long enough for its header, the header is at most
    :data:`MAX_HEADER_BYTES`, is a JSON object, and every tensor's byte range lies inside the
    file and matches its shape and dtype.  Errors are ``ValueError`` naming the file
    (``FileNotFoundError`` if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path}: empty file, not an sns model file")
    if size < 8:
        raise ValueError(f"{path}: truncated ({size} bytes), not an sns model file")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: safetensors header of {n} bytes exceeds the limit of {MAX_HEADER_BYTES} "
                             "bytes; not an sns model file")
        if 8 + n > size:
            raise ValueError(f"{path}: truncated: the header needs {n} bytes, the file holds {size - 8} after "
                             "the length field")
        raw = f.read(n)
    header = _json(raw, path, "the safetensors header")
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object; not an sns model file")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise ValueError(f"{path}: the __metadata__ entry must map strings to strings")
            continue
        try:
            shape, (lo, hi), dtype = [int(d) for d in info["shape"]], info["data_offsets"], info["dtype"]
            lo, hi = int(lo), int(hi)
            itemsize = _DTYPE_BYTES.get(str(dtype))  # None: a dtype this table does not know
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: malformed entry for tensor {name!r} in the safetensors header") from None
        if any(d < 0 for d in shape) or not 0 <= lo <= hi or (
                itemsize is not None and hi - lo != math.prod(shape) * itemsize):
            raise ValueError(f"{path}: tensor {name!r}: shape {shape} ({dtype}) does not match its byte range "
                             f"[{lo}, {hi})")
        if hi > data_len:
            raise ValueError(f"{path}: truncated: tensor {name!r} ends at byte {hi} of the data, the file holds "
                             f"{data_len}")
    return header


def read_metadata(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(spec, extra)`` of an exported file, without reading the weights (see :func:`read_header`)."""
    return _metadata(Path(path), read_header(path))


def _metadata(path: Path, header: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    meta = header.get("__metadata__") or {}
    if meta.get("sns_format") != FORMAT_VERSION or "sns_model" not in meta:
        raise ValueError(f"{path} is not an sns model file (metadata sns_format={meta.get('sns_format')!r}, "
                         f"expected {FORMAT_VERSION!r} with an sns_model entry)")
    spec = _json(meta["sns_model"], path, "the sns_model metadata")
    extra = _json(meta.get("sns_extra", "{}"), path, "the sns_extra metadata")
    if not isinstance(spec, dict) or not isinstance(extra, dict):
        raise ValueError(f"{path}: sns_model and sns_extra metadata must be JSON objects")
    return spec, extra


def check_spec(path: str | os.PathLike, spec: Mapping[str, Any], header: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless the network of ``spec`` has exactly the tensors of ``header``
    (names and shapes).  The network is built on the ``meta`` device: no memory is allocated,
    so a spec that claims a huge width is refused before anything is built for real."""
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build_model(spec).state_dict().items()}
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: invalid model spec {dict(spec)}: {err}") from None
    stored = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    problems = [f"missing {k}" for k in sorted(set(shapes) - set(stored))]
    problems += [f"unexpected {k}" for k in sorted(set(stored) - set(shapes))]
    problems += [f"{k}: spec {shapes[k]} vs file {stored[k]}" for k in sorted(set(shapes) & set(stored))
                 if shapes[k] != stored[k]]
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{path}: the weights do not match the model spec ({spec.get('kind')!r}): "
                         + "; ".join(problems[:5]) + more)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of an exported file from that file alone; returns ``(model, extra)``.

    The header is checked first (:func:`read_header`), then the spec against the tensors' shapes
    (:func:`check_spec`), and only then is the network built and loaded (strictly).  The model
    is in ``eval()`` mode on ``device``.
    """
    path = Path(path)
    header = read_header(path)
    spec, extra = _metadata(path, header)
    check_spec(path, spec, header)
    model = build_model(spec)
    try:
        state = load_file(str(path), device=str(device))
    except Exception as err:  # noqa: BLE001 - safetensors' own errors (SafetensorError, OSError)
        raise ValueError(f"{path}: cannot read the weights: {err}") from None
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), extra


def load_schedule(extra: Mapping[str, Any]):
    """The noise schedule recorded in a denoiser file's ``extra`` metadata."""
    from sns.diffusion import make_schedule

    if "schedule" not in extra:
        raise ValueError(f"no schedule in the metadata (task {extra.get('task')!r}); is this a denoiser file?")
    s = extra["schedule"]
    return make_schedule(s["name"], int(s["n_levels"]), **dict(s.get("kwargs") or {}))


def export_checkpoint(ckpt: str | os.PathLike, path: str | os.PathLike,
                      extra: Mapping[str, Any] | None = None) -> Path:
    """Export the weights of a Lightning checkpoint of an ``sns.training`` module.

    Reads it with ``torch.load(weights_only=True)``; the model spec comes from the
    hyper-parameter ``net``; ``state_dict`` holds the EMA weights when the run used
    ``EMAWeightAveraging``.  The module's ``export_extra`` fields are rebuilt from the
    hyper-parameters and merged with ``extra``.
    """
    from sns.training.checkpoint_io import read_checkpoint

    ck = read_checkpoint(ckpt)  # weights_only=True; a refused or damaged file: ValueError naming it
    hp = ck.get("hyper_parameters") or {}
    if "net" not in hp:
        raise ValueError(f"{ckpt}: no 'net' model spec in the checkpoint hyper-parameters")
    spec = resolve_spec(hp["net"])
    model = build_model(spec)
    prefix = "model."
    model.load_state_dict({k[len(prefix):]: v for k, v in ck["state_dict"].items() if k.startswith(prefix)})
    from sns.models import model_task

    meta: dict[str, Any] = {"task": model_task(spec)}
    if meta["task"] == "denoiser":
        meta["schedule"] = {"name": hp.get("schedule", "cosine"), "n_levels": int(hp.get("n_levels")),
                            "kwargs": dict(hp.get("schedule_kwargs") or {})}
    meta.update(extra or {})
    return save_model(model, spec, path, meta)
