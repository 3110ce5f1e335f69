"""The method registry: every way sns steps a system forward, declared once.

A *method* is a way to turn trained networks into a stepper (``state -> state``,
:mod:`sns.rollout`).  Each one is a :class:`Method` entry in :data:`METHODS` that says

* how it trains: the ``sns-train`` task (``model.<train_task>`` in conf/model) and, for the
  pair-denoiser methods, the level sampling of :func:`sns.diffusion.pair_dsm_loss`;
* what it exports: the ``method`` recorded in the model file (:func:`method_of` reads it back;
  files written before the baselines existed record none and are SNS);
* how it becomes a stepper: whether it refines a surrogate's proposals, the ``sns-rollout``
  config key of its options (also the key under which a rollout store records them), and its
  builder ``module:function``, called as ``builder(model, extra, surrogate, settings, context)``
  and returning ``(stepper, recorded settings)``.

Nothing else in sns branches on method names: ``sns-train`` records :func:`method_for_levels`,
``sns-rollout`` and the benchmarks call :func:`build_stepper`, :class:`sns.refine.SNSRefiner`'s
``from_file`` asks :func:`method_of`.  Adding a method is one entry here and one module with the
builder (:func:`register` adds one at run time, e.g. from a user's package).

=====================  ===============  ==========================  ==========  ==================
method                 sns-train task   file records                surrogate   options (rollout)
=====================  ===============  ==========================  ==========  ==================
``surrogate``          surrogate        task surrogate              refines     ``gaussian``
``sns``                denoiser         independent levels          refines     ``refiner``
``clean_conditioning`` denoiser         (an ``sns`` file)           none        ``clean_conditioning``
``acdm``               acdm             diagonal levels             none        ``acdm``
``thermalizer``        thermalizer      unconditional levels        refines     ``thermalizer``
``pde_refiner``        pde_refiner      ``pde_refiner``             none        ``pde_refiner``
``neural_ode``         neural_ode       task neural_ode             (is one)    ``gaussian``
=====================  ===============  ==========================  ==========  ==================

The Neural ODE (seed 000) is a surrogate of its own kind: its export rolls out as
``surrogate=<file>`` (one frame of its flow per step), like a ``task=surrogate`` export; a
rollout of it alone records the method ``neural_ode`` (a surrogate export's, ``surrogate``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["METHODS", "Method", "StepperContext", "build_stepper", "get_method", "method_for_levels", "method_of",
           "register", "surrogate_tasks"]


@dataclass(frozen=True)
class Method:
    """One method (module docstring).

    Attributes:
        name: the name recorded in model files and rollout stores (``method``).
        summary: one line for listings and error messages.
        train_task: the ``sns-train`` task that trains its network (``model.<train_task>``).
        refines: True: it refines a surrogate's proposals (``sns-rollout surrogate=`` required);
            False: it forecasts on its own (a surrogate is refused).
        settings: the ``sns-rollout`` config key of its options and the store attrs key.
        builder: ``"package.module:function"``, imported when a stepper is built.
        levels: level sampling of :func:`sns.diffusion.pair_dsm_loss` for the pair-denoiser
            methods (``None`` otherwise).
        file_method: the method a model file must record for this method to use it (default:
            ``name``; clean conditioning rolls out an ``sns`` file).
        needs_model: False for the surrogate alone (no diffusion model file).
    """

    name: str
    summary: str
    train_task: str
    refines: bool
    settings: str
    builder: str
    levels: str | None = None
    file_method: str | None = None
    needs_model: bool = True

    @property
    def uses(self) -> str:
        """The method a model file must record (``file_method`` or ``name``)."""
        return self.file_method or self.name

    def build(self, model: Any, extra: Mapping[str, Any] | None, surrogate: Any,
              settings: Mapping[str, Any] | None = None, context: StepperContext | None = None) -> tuple[Any, dict]:
        """``(stepper, recorded settings)``: checks the surrogate rule, then calls the builder."""
        if self.refines and surrogate is None:
            raise ValueError(f"method {self.name!r} refines a surrogate's proposals: give surrogate=<file>")
        if not self.refines and surrogate is not None:
            raise ValueError(f"method {self.name!r} forecasts on its own and uses no surrogate: set surrogate=null")
        if self.needs_model and model is None:
            raise ValueError(f"method {self.name!r} needs a model file (sns-train task={self.train_task})")
        module, _, function = self.builder.partition(":")
        fn: Callable[..., tuple[Any, dict]] = getattr(importlib.import_module(module), function)
        return fn(model, dict(extra or {}), surrogate, dict(settings or {}), context or StepperContext())


@dataclass
class StepperContext:
    """What a builder may need besides the model files.

    ``device``: where the stepper runs.  ``data_dir``: the data set (a directory of split
    stores), for options calibrated on data (SNS's ``proposal_sigma: auto`` and
    ``state_guard``): calibrations read the valid and train splits, never the evaluation split.
    """

    device: Any = "cpu"
    data_dir: Path | str | None = None

    def _store(self, split: str) -> Path:
        if self.data_dir is None:
            raise ValueError(f"this option is calibrated on the data set's {split} split: give data_dir")
        from sns.data.io import check_store

        path = Path(self.data_dir) / f"{split}.zarr"
        check_store(path)
        return path

    def pairs(self, split: str = "valid", max_pairs: int = 4096) -> tuple[Any, Any]:
        """Up to ``max_pairs`` consecutive pairs ``(x_{t-1}, x_t)`` of ``split`` (evenly spread,
        normalised like the training data), on ``device``."""
        import torch

        from sns.data.windows import WindowDataset

        ds = WindowDataset(self._store(split), history=1, horizon=1, stride=1)
        idx = torch.linspace(0, len(ds) - 1, min(len(ds), max_pairs)).long().unique()
        w = torch.stack([ds[int(i)] for i in idx]).to(self.device)  # (N, 2, *state)
        return w[:, 0], w[:, 1]

    def state_shape(self, split: str) -> tuple[int, ...]:
        """Shape of one state of ``split`` (read lazily: one window, not the split)."""
        from sns.data.windows import WindowDataset

        return tuple(WindowDataset(self._store(split), history=1, horizon=1, stride=1)[0][0].shape)

    def states(self, split: str, max_states: int = 100_000) -> Any:
        """Up to ``max_states`` states of ``split`` (evenly spread over its frames), normalised
        like the training data, ``(N, *state)``."""
        import torch

        from sns.data.windows import WindowDataset

        ds = WindowDataset(self._store(split), history=1, horizon=1, stride=1, in_memory=True)
        idx = torch.linspace(0, len(ds) - 1, min(len(ds), max_states)).long().unique()
        return torch.stack([ds[int(i)][0] for i in idx])


METHODS: dict[str, Method] = {}


def register(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to :data:`METHODS` (``replace=True`` to redefine a name)."""
    if not isinstance(method, Method):
        raise TypeError(f"register takes a Method, got {type(method).__name__}")
    if method.name in METHODS and not replace:
        raise ValueError(f"method {method.name!r} is already registered (replace=True redefines it)")
    if ":" not in method.builder:
        raise ValueError(f"builder must be 'package.module:function', got {method.builder!r}")
    METHODS[method.name] = method
    return method


for _m in (
    Method("surrogate", "the surrogate alone (Gaussian approximation: optional per-step noise)",
           train_task="surrogate", refines=True, settings="gaussian",
           builder="sns.baselines.gaussian:from_settings", needs_model=False),
    Method("sns", "SNS: a pair denoiser refines each surrogate proposal along a monotone path",
           train_task="denoiser", refines=True, settings="refiner", builder="sns.refine:from_settings",
           levels="independent"),
    Method("clean_conditioning", "x_t generated from pure noise given the clean x_{t-1} (an SNS pair denoiser)",
           train_task="denoiser", refines=False, settings="clean_conditioning",
           builder="sns.refine:clean_conditioning_from_settings", file_method="sns"),
    Method("acdm", "ACDM: conditional diffusion on the diagonal path, S calls per step",
           train_task="acdm", refines=False, settings="acdm", builder="sns.baselines.acdm:from_settings",
           levels="diagonal"),
    Method("thermalizer", "Thermalizer: an unconditional diffusion model corrects drifting proposals",
           train_task="thermalizer", refines=True, settings="thermalizer",
           builder="sns.baselines.thermalizer:from_settings", levels="unconditional"),
    Method("pde_refiner", "PDE-Refiner: K refinement steps of its own forecast",
           train_task="pde_refiner", refines=False, settings="pde_refiner",
           builder="sns.baselines.pde_refiner:from_settings"),
    Method("neural_ode", "a Neural ODE's flow over one frame, rolled out as a surrogate (seed 000)",
           train_task="neural_ode", refines=True, settings="gaussian",
           builder="sns.baselines.gaussian:from_settings", needs_model=False),
):
    register(_m)


def get_method(name: str) -> Method:
    """The registered method ``name`` (a ``ValueError`` lists the valid names)."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; valid choices: {sorted(METHODS)}") from None


def method_of(extra: Mapping[str, Any]) -> Method:
    """The method a model file holds, from its metadata (:func:`sns.export.load_model`'s
    ``extra``): its recorded ``method``; a diffusion model that records none is SNS (files
    written before the baselines existed); a surrogate or Neural ODE file is its task."""
    task = extra.get("task")
    if "method" in extra:
        return get_method(extra["method"])
    if task == "denoiser":
        return METHODS["sns"]
    if task in ("surrogate", "neural_ode"):
        return METHODS[task]
    raise ValueError(f"the file's metadata records task {task!r} and no method; valid methods: {sorted(METHODS)}")


def method_for_levels(levels: str) -> str:
    """The method a pair denoiser trained with ``levels`` sampling is recorded as."""
    for m in METHODS.values():
        if m.levels == levels and m.file_method is None:
            return m.name
    choices = sorted(m.levels for m in METHODS.values() if m.levels)
    raise ValueError(f"no method trains with levels {levels!r}; valid choices: {choices}")


def surrogate_tasks() -> tuple[str, ...]:
    """File tasks that roll out as a surrogate (``sns-rollout surrogate=<file>``)."""
    return tuple(m.train_task for m in METHODS.values() if not m.needs_model)


def build_stepper(method: str | Method, model: Any, extra: Mapping[str, Any] | None, surrogate: Any = None,
                  settings: Mapping[str, Any] | None = None,
                  context: StepperContext | None = None) -> tuple[Any, dict[str, Any]]:
    """``(stepper, recorded settings)`` of ``method`` (a name or a :class:`Method`) for
    ``model`` (with its file's ``extra``; ``None`` for the surrogate alone), ``surrogate``
    (``None`` for the forecasters) and its options ``settings`` (defaults where missing).

    A model file made for another method is refused, naming both.
    """
    m = get_method(method) if isinstance(method, str) else method
    if m.needs_model and extra is not None:
        held = method_of(extra).name
        if held != m.uses:
            raise ValueError(f"method {m.name!r} needs a model trained for {m.uses!r} (sns-train "
                             f"task={METHODS[m.uses].train_task}), but the file holds {held!r}")
    return m.build(model, extra, surrogate, settings, context)
