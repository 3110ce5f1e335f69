"""Inference artifacts: model weights in safetensors with the model spec in the metadata.

Training artifacts (Lightning checkpoints: optimizer, schedulers, EMA state; for resume)
and inference artifacts (this module) are separate.  An exported file is a plain
safetensors file whose string metadata holds

* ``sns_format``: format version (``"1"``);
* ``sns_model``: the *resolved* model spec as JSON (:func:`sns.training.models.resolve_spec`),
  enough to rebuild the network with :func:`sns.training.models.build_model`;
* ``sns_extra``: JSON of everything else inference needs (``task``; for denoisers the
  noise ``schedule`` ``{"name", "n_levels", "kwargs"}``; the data normalisation
  ``norm_offset``/``norm_scale``, ``system``...).

Loading never unpickles anything: safetensors holds tensors only, the spec is JSON.
When the file is written from a module trained with ``EMAWeightAveraging``, the weights
are the EMA weights (after ``fit`` the module holds them; in a checkpoint they are
``state_dict``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from sns.training.models import build_model, resolve_spec

__all__ = [
    "FORMAT_VERSION",
    "export_checkpoint",
    "load_model",
    "load_schedule",
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
    os.replace(tmp, path)
    return path


def read_metadata(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(spec, extra)`` of an exported file, without reading the weights."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("sns_format") != FORMAT_VERSION or "sns_model" not in meta:
        raise ValueError(f"{path} is not an sns model file (metadata sns_format={meta.get('sns_format')!r}, "
                         f"expected {FORMAT_VERSION!r} with an sns_model entry)")
    return json.loads(meta["sns_model"]), json.loads(meta.get("sns_extra", "{}"))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of an exported file from that file alone; returns ``(model, extra)``.

    The model is in ``eval()`` mode on ``device``; the weights are loaded strictly.
    """
    spec, extra = read_metadata(path)
    model = build_model(spec)
    model.load_state_dict(load_file(str(path), device=str(device)), strict=True)
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
    ck = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    hp = ck.get("hyper_parameters") or {}
    if "net" not in hp:
        raise ValueError(f"{ckpt}: no 'net' model spec in the checkpoint hyper-parameters")
    spec = resolve_spec(hp["net"])
    model = build_model(spec)
    prefix = "model."
    model.load_state_dict({k[len(prefix):]: v for k, v in ck["state_dict"].items() if k.startswith(prefix)})
    from sns.training.models import model_task

    meta: dict[str, Any] = {"task": model_task(spec)}
    if meta["task"] == "denoiser":
        meta["schedule"] = {"name": hp.get("schedule", "cosine"), "n_levels": int(hp.get("n_levels")),
                            "kwargs": dict(hp.get("schedule_kwargs") or {})}
    meta.update(extra or {})
    return save_model(model, spec, path, meta)
