"""Surrogates from anywhere: sns exports, TorchScript / ``torch.export`` files, Python import paths.

One loader, :func:`load_surrogate`, for ``sns-rollout surrogate=...`` and
:meth:`sns.refine.SNSRefiner.from_file`.  It also settles the one question that cannot be
guessed from a model: **which units it maps**.

* ``"normalised"``: states ``(x - norm_offset) / norm_scale`` of the data set (what
  ``sns-train`` trains on and what rollout stores hold);
* ``"physical"``: the data's own units (a model someone trained on raw fields).

An sns export (``.safetensors`` from ``sns-train task=surrogate``) records that it is
normalised; any other model must have its units declared, by the caller (``units=``) or by the
model itself (an attribute ``units``).  When both are given they must agree: a mismatch is an
error, never a silent rescaling.  :class:`NormalisedView` runs a physical-units surrogate on
normalised states (how ``sns-rollout`` steps one), :func:`norm_tensors` shapes a data set's
recorded normalisation for states of a given shape.

Sources (``spec``):

* ``path/to/model.safetensors``: an sns export (:func:`sns.export.load_model`);
* ``path/to/model.pt2``: a :func:`torch.export.save` program (its ``.module()`` is stepped; export
  it with a dynamic batch dimension to step batches of another size);
* ``path/to/model.pt`` / ``.pth`` / ``.ts``: a TorchScript file (:func:`torch.jit.save`);
* ``package.module:name``: an import path.  ``name`` may be an ``nn.Module`` instance (used as
  is), an ``nn.Module`` subclass or any other callable (a *factory*: called with ``kwargs`` and
  must return the stepper).  A plain function that is itself the stepper is wrapped in a factory
  (``def make(): return my_step``).  The module must be importable (installed, or on
  ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["UNITS", "LoadedSurrogate", "NormalisedView", "load_surrogate", "norm_tensors"]

UNITS = ("normalised", "physical")
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit")


class LoadedSurrogate:
    """What :func:`load_surrogate` returns: the stepper, its units, where it came from."""

    def __init__(self, model: Callable[..., Tensor], units: str, kind: str, source: str,
                 extra: dict[str, Any] | None, sha256: str | None) -> None:
        self.model = model
        self.units = units  #: "normalised" | "physical"
        self.kind = kind  #: "sns" | "torch.export" | "torchscript" | "import"
        self.source = source  #: the spec as given
        self.extra = extra  #: an sns export's metadata (None otherwise)
        self.sha256 = sha256  #: content hash of the file (of the module's source for an import path)

    def __repr__(self) -> str:
        return f"LoadedSurrogate({self.kind} {self.source!r}, units={self.units!r})"


def _check_units(units: str | None, what: str) -> None:
    if units is not None and units not in UNITS:
        raise ValueError(f"{what} must be one of {UNITS}, got {units!r}")


def _import(spec: str, kwargs: Mapping[str, Any]) -> tuple[Callable[..., Tensor], str | None]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"surrogate {spec!r} is neither a model file that exists nor an import path "
                         "'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"surrogate {spec!r}: cannot import {module_name!r} ({err}); install it or put "
                         "its folder on PYTHONPATH") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"surrogate {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        if kwargs:
            raise ValueError(f"surrogate {spec!r} is a module instance; kwargs {dict(kwargs)} apply only to a factory")
        model: Any = obj
    elif callable(obj):
        try:
            model = obj(**dict(kwargs))
        except TypeError as err:
            raise ValueError(f"surrogate {spec!r} is called as a factory with kwargs {dict(kwargs)} and "
                             f"failed: {err}") from None
        if not callable(model):
            raise ValueError(f"surrogate factory {spec!r} returned a {type(model).__name__}, not a stepper "  # noqa: TRY004 - a bad spec
                             "(an nn.Module or a callable x -> x_next)")
    else:
        raise ValueError(f"surrogate {spec!r} is a {type(obj).__name__}: expected an nn.Module, a module "  # noqa: TRY004 - a bad spec
                         "class or a factory")
    src = inspect.getsourcefile(module) if hasattr(module, "__file__") else None
    return model, src


def load_surrogate(spec: str | os.PathLike[str] | nn.Module | Callable[..., Tensor], *,
                   units: str | None = None, device: str | torch.device = "cpu",
                   kwargs: Mapping[str, Any] | None = None) -> LoadedSurrogate:
    """The surrogate ``spec`` names (a file, an import path, or an object) and the units it maps.

    Args:
        spec: a model file (``.safetensors`` sns export, ``.pt2`` torch.export program, TorchScript
            ``.pt`` / ``.pth`` / ``.ts``), an import path ``package.module:name``, or a stepper
            object (checked for its declared ``units`` only).
        units: the units the caller says the model maps (``"normalised"`` or ``"physical"``);
            ``None``: take them from the model (an sns export is normalised; another model
            must declare an attribute ``units``).
        device: where a file's model is loaded (an imported one is moved there if it is a module).
        kwargs: factory arguments for an import path.

    Raises ``ValueError`` for an unknown units string, a model whose units are neither given nor
    declared, a given ``units`` that contradicts the model's own, a file that does not exist or
    cannot be loaded, and an import path that does not resolve to a stepper.
    """
    _check_units(units, "units")
    kwargs = dict(kwargs or {})
    extra: dict[str, Any] | None = None
    sha: str | None = None
    declared: str | None = None
    if isinstance(spec, (str, os.PathLike)) and not (isinstance(spec, str) and ":" in spec and not Path(spec).exists()):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"model file {path} does not exist (a surrogate is a model file or an import "
                             "path package.module:name)")
        from sns.export import file_sha256

        sha = file_sha256(path)
        if path.suffix == ".safetensors":
            from sns.export import load_model

            model, extra = load_model(path, device)
            from sns.methods import surrogate_tasks

            if extra.get("task") not in surrogate_tasks():
                raise ValueError(f"{path} holds a {extra.get('task')!r} model, expected a surrogate "
                                 f"(sns-train task={'|'.join(surrogate_tasks())})")
            kind, declared = "sns", "normalised"
        elif path.suffix == ".pt2":
            try:
                model = torch.export.load(str(path)).module()
            except Exception as err:  # noqa: BLE001 - any failure to load is a bad file
                raise ValueError(f"{path} is not a torch.export program (torch.export.save): {err}") from None
            kind = "torch.export"
        elif path.suffix in TORCHSCRIPT_SUFFIXES:
            try:
                model = torch.jit.load(str(path), map_location=device)
            except Exception as err:  # noqa: BLE001
                raise ValueError(f"{path} is not a TorchScript file (torch.jit.save): {err}; a pickled "
                                 "state dict needs its class: use an import path package.module:factory") from None
            kind = "torchscript"
        else:
            raise ValueError(f"surrogate file {path}: unknown format {path.suffix!r}; expected .safetensors "
                             f"(sns), .pt2 (torch.export) or {'/'.join(TORCHSCRIPT_SUFFIXES)} (TorchScript)")
        source = str(path)
    elif isinstance(spec, str):
        model, src = _import(spec, kwargs)
        kind, source = "import", spec
        if src is not None and Path(src).is_file():
            from sns.export import file_sha256

            sha = file_sha256(src)
    else:
        if not callable(spec):
            raise ValueError(f"surrogate must be a file, an import path or a stepper, got {type(spec).__name__}")
        model, kind, source = spec, "object", type(spec).__name__
    if kwargs and kind != "import":
        raise ValueError(f"kwargs {kwargs} apply only to an import path, not to a {kind} surrogate")
    own = getattr(model, "units", None)
    if declared is None and own is not None:
        _check_units(own, f"surrogate {source}: its attribute units")
        declared = own
    if units is not None and declared is not None and units != declared:
        raise ValueError(f"unit mismatch: surrogate {source} maps {declared} states but units={units!r} "
                         "was given; give the model's own units (or leave them out)")
    resolved = units or declared
    if resolved is None:
        raise ValueError(f"surrogate {source} ({kind}) does not say which units it maps: declare them "
                         f"(units= / sns-rollout surrogate_units=) as one of {UNITS}")
    if isinstance(model, nn.Module):
        model = model.to(device)
        if kind != "torch.export":  # an exported program's module has no train/eval modes
            model = model.eval()
    return LoadedSurrogate(model, resolved, kind, source, extra, sha)


def norm_tensors(offset: Any, scale: Any, state_shape: Sequence[int], what: str,
                 device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """A data set's recorded ``norm_offset`` / ``norm_scale`` as float32 tensors that broadcast over
    states of ``state_shape`` (one value, or one per channel ``(C, 1, 1)`` / coordinate ``(D,)``).

    Raises ``ValueError`` (naming ``what``) for a missing, non-numeric, non-finite, wrongly sized
    or non-positive scale."""
    state = tuple(int(s) for s in state_shape)
    c = state[0]
    out = []
    for key, value in (("norm_offset", offset), ("norm_scale", scale)):
        if value is None:
            raise ValueError(f"{what} records no {key}")
        try:
            t = torch.as_tensor(value, dtype=torch.float32).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{what}: {key}={value!r} is not a number or a list of numbers") from None
        if t.numel() not in (1, c) or not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what}: {key} has {t.numel()} entries {t.tolist()}, expected 1 or "
                             f"{c} finite values (one per channel or coordinate of states {state})")
        out.append(t.reshape(-1, *([1] * (len(state) - 1))).to(device))
    if not bool((out[1] > 0).all()):
        raise ValueError(f"{what}: norm_scale must be positive, got {out[1].flatten().tolist()}")
    return out[0], out[1]


class NormalisedView(nn.Module):
    """A physical-units surrogate stepped on normalised states:
    ``z -> (f(z * scale + shift) - shift) / scale``.  Passes a ``generator`` on to a stochastic
    surrogate; reports no network calls of its own (the surrogate's ``last_calls`` if it has one)."""

    units = "normalised"

    def __init__(self, surrogate: Callable[..., Tensor], shift: Tensor, scale: Tensor) -> None:
        super().__init__()
        from sns.rollout.stepper import accepts_generator, counts_calls

        self.surrogate = surrogate
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self._pass_generator = accepts_generator(surrogate)
        self.counts_calls = counts_calls(surrogate)

    @property
    def last_calls(self) -> Any:
        return getattr(self.surrogate, "last_calls", None)

    def forward(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        from sns.rollout.stepper import call_step, check_step_output

        x = z * self.scale + self.shift
        y = check_step_output(x, call_step(self.surrogate, x, generator, self._pass_generator),
                              "the physical-units surrogate")
        return ((y - self.shift) / self.scale).to(z.dtype)
