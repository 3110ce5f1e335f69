"""``sns-rollout``: roll out an exported surrogate, refined by an exported SNS pair denoiser,
or one of the baselines (config: conf/rollout.yaml).

The models are rebuilt from their ``.safetensors`` files alone (:func:`sns.export.load_model`);
a third-party surrogate comes from an import path or a TorchScript / torch.export file with its
units declared (``surrogate_units``; :func:`sns.surrogates.loading.load_surrogate`);
the stepper is the surrogate (Gaussian approximation), :class:`sns.refine.SNSRefiner` wrapping
it, or a baseline of :mod:`sns.baselines` (the diffusion model's file says which); the rollout is
:func:`sns.rollout.rollout` streaming to a zarr store, which resumes when the same command is
run again.  The run identity holds the SHA-256 of every model file and the method's settings
(:func:`run_identity`): a store of other models or settings is refused, naming what differs.  The
default store path is a function of the inputs (:func:`default_out`).  Initial conditions are frames of a data set split, normalised like the training
data (the models' files record the normalisation; a mismatch with the data set is an error).

Ensembles (``ensemble=M``, default 1): every initial condition is replicated ``M`` times, so the
rollout's batch is ``trajectories * M`` rows, trajectory-major: store row ``k * M + m`` is
member ``m`` of initial condition ``k`` (trajectory ``k`` of the split).  The members start
from the same state and differ only by the sampler's noise (SNS and every stochastic baseline
draw their noise per row from the rollout's one generator, :mod:`sns.rollout`); a
deterministic method (surrogate with ``gaussian.sigma=0``) gives ``M`` identical members.  The
store's attrs record ``ensemble`` (``M``) and ``initial_conditions`` (``trajectories``), which
``sns-evaluate`` reads to score the ensemble (:mod:`sns.metrics.ensemble`).  With
``on_failure=retire`` a member (or trajectory) that blows up is retired alone and the others run
on (:func:`sns.rollout.rollout`); ``sns-evaluate`` scores the survivors and reports the retired.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from sns.cli import CONFIG_PATH, check_cuda, check_fits, check_missing, check_numbers

log = logging.getLogger(__name__)


def _check_norm(name: str, extra: dict[str, Any], data_attrs: dict[str, Any]) -> None:
    meta = extra.get("data") or {}
    for key in ("system", "norm_offset", "norm_scale"):
        if key in meta and meta[key] != data_attrs.get(key):
            raise ValueError(f"{name} was trained on data with {key}={meta[key]!r} but the data set has "
                             f"{key}={data_attrs.get(key)!r}; use the same data set (or its normalisation)")


def _load_surrogate(cfg: DictConfig, data_attrs: dict[str, Any], device: Any,
                    state_shape: tuple[int, ...] | None) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
    """``(stepper, attrs, file metadata or None)`` of ``cfg.surrogate`` (sns export, torch.export /
    TorchScript file or import path, :func:`sns.surrogates.loading.load_surrogate`): the stepper
    works on the data set's normalised states:
    a physical-units model (``surrogate_units=physical``) is wrapped in
    :class:`~sns.surrogates.loading.NormalisedView` with the data set's normalisation."""
    from sns.surrogates.loading import NormalisedView, load_surrogate, norm_tensors

    kwargs = cfg.get("surrogate_kwargs") or {}
    kwargs = OmegaConf.to_container(kwargs, resolve=True) if OmegaConf.is_config(kwargs) else dict(kwargs)
    loaded = load_surrogate(str(cfg.surrogate), units=cfg.get("surrogate_units"), device=device, kwargs=kwargs)
    if loaded.extra is not None:
        _check_norm(str(cfg.surrogate), loaded.extra, data_attrs)
    surrogate = loaded.model
    if loaded.units == "physical":
        if state_shape is None:
            raise ValueError("a physical-units surrogate needs the data set's state shape")
        shift, scale = norm_tensors(data_attrs.get("norm_offset"), data_attrs.get("norm_scale"), state_shape,
                                    f"data set {cfg.data_dir}", device)
        surrogate = NormalisedView(surrogate, shift, scale)
    if state_shape is not None:
        check_fits(surrogate, state_shape, f"surrogate {cfg.surrogate}", f"data set {cfg.data_dir}")
    attrs = {"surrogate": str(cfg.surrogate), "surrogate_sha256": loaded.sha256}
    if loaded.kind != "sns":  # (kept out of an sns export's identity, so its stores resume as before)
        attrs.update(surrogate_kind=loaded.kind, surrogate_units=loaded.units, surrogate_kwargs=kwargs)
    return surrogate, attrs, loaded.extra


def build_stepper(cfg: DictConfig, data_attrs: dict[str, Any], device: Any,
                  state_shape: tuple[int, ...] | None = None) -> tuple[Any, dict[str, Any]]:
    """The stepper of ``cfg`` and the attrs that describe it.

    The method (:mod:`sns.methods`) follows from the files: no ``denoiser`` -> the surrogate
    alone (Gaussian approximation, optional noise ``gaussian.sigma``); otherwise the ``method``
    recorded in the denoiser's file (files written before baselines existed are ``sns``), or
    ``method=<name>`` where a method uses another's file (``clean_conditioning``: an ``sns``
    file).  The method's options are ``cfg.<its settings key>`` (``refiner``, ``thermalizer``,
    ...); SNS and the Thermalizer wrap the surrogate, the others refuse one.  With
    ``state_shape`` (one state of the data set), a model file made for other states is refused
    (:func:`sns.cli.check_fits`).
    """
    from sns.export import file_sha256, load_model
    from sns.methods import StepperContext, get_method, method_of

    surrogate = s_extra = None
    attrs: dict[str, Any] = {"surrogate": None, "denoiser": None, "surrogate_sha256": None,
                             "denoiser_sha256": None}
    if cfg.surrogate is not None:
        surrogate, sur_attrs, s_extra = _load_surrogate(cfg, data_attrs, device, state_shape)
        attrs.update(sur_attrs)
    model = d_extra = None
    if cfg.denoiser is None:
        if surrogate is None:
            raise ValueError("nothing to roll out: give surrogate=<file> and/or denoiser=<file>")
        # the surrogate alone: its file's method (a Neural ODE export records task neural_ode)
        alone = method_of(s_extra).name if s_extra is not None and "task" in s_extra else "surrogate"
        method = get_method(cfg.get("method") or alone)
        if method.needs_model:
            raise ValueError(f"method {method.name!r} needs denoiser=<file> (sns-train task={method.train_task})")
    else:
        model, d_extra = load_model(cfg.denoiser, device)
        if d_extra.get("task") != "denoiser":
            raise ValueError(f"{cfg.denoiser} holds a {d_extra.get('task')!r} model, expected a diffusion model "
                             "(sns-train task=denoiser|acdm|thermalizer|pde_refiner)")
        _check_norm(str(cfg.denoiser), d_extra, data_attrs)
        if state_shape is not None and getattr(model, "state_shape", None) is not None:
            check_fits(model, state_shape, f"denoiser {cfg.denoiser}", f"data set {cfg.data_dir}")
        method = get_method(cfg.get("method") or method_of(d_extra).name)
        if not method.needs_model:
            raise ValueError(f"method {method.name!r} uses no denoiser: set denoiser=null")
        attrs.update(denoiser=str(cfg.denoiser), denoiser_sha256=file_sha256(cfg.denoiser))
    attrs["method"] = method.name
    settings = cfg.get(method.settings)
    settings = OmegaConf.to_container(settings, resolve=True) if settings is not None else {}
    from sns.methods import build_stepper as build

    step, attrs[method.settings] = build(method, model, d_extra, surrogate, settings,
                                         StepperContext(device=device, data_dir=cfg.data_dir))
    return step.to(device), attrs


def run_identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """What identifies a rollout beyond what :func:`sns.rollout.rollout` sees itself (initial
    states, seed, n_steps, guards): the content hashes of the model files, the method and its
    settings (noise, refiner / baseline options, conserve_mean).  A store of another identity
    is not resumed."""
    from sns.methods import METHODS

    settings = dict.fromkeys(m.settings for m in METHODS.values())  # ordered, unique
    keys = ("method", "surrogate_sha256", "surrogate_units", "surrogate_kwargs", "denoiser_sha256",
            "conserve_mean", "precision", *settings)
    return {k: attrs.get(k) for k in keys if k in attrs}


def default_out(cfg: DictConfig, attrs: dict[str, Any], identity: dict[str, Any]) -> Path:
    """``<out_root>/<method>-<split>-<digest>.zarr``: a path that is a function of the inputs
    (the run identity, the data split and its frames, n_steps, seed, guards), so re-running the
    same command resumes the same store and another command never meets it."""
    import hashlib
    import json

    inputs = {"identity": identity, "data_dir": str(Path(cfg.data_dir).resolve()), "split": cfg.split,
              "start_frame": int(cfg.start_frame), "trajectories": int(cfg.trajectories),
              "n_steps": int(cfg.n_steps), "seed": int(cfg.seed), "blowup_factor": float(cfg.blowup_factor),
              "device": str(cfg.device)}
    members = 1 if cfg.get("ensemble") is None else int(cfg.ensemble)
    if members != 1:  # only then: the paths of single-member rollouts stay what they were
        inputs["ensemble"] = members
    if cfg.get("on_failure", "stop") != "stop":  # likewise
        inputs["on_failure"] = str(cfg.on_failure)
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    root = cfg.get("out_root") or "outputs/rollout"
    return Path(root) / f"{attrs['method']}-{cfg.split}-{digest}.zarr"


def run_rollout(cfg: DictConfig) -> Any:
    """Build the stepper of ``cfg`` and roll it out; returns the :class:`sns.rollout.RolloutResult`."""
    import torch

    from sns.data.io import check_store
    from sns.data.windows import WindowDataset
    from sns.rollout import rollout, state_rms

    check_missing(cfg)
    check_numbers(cfg, ints=("seed", "n_steps", "trajectories", "start_frame", "chunk", "torch_threads", "ensemble",
                             "refiner.n_moves", "thermalizer.start", "thermalizer.stop", "thermalizer.limit",
                             "clean_conditioning.n_moves"),
                  floats=("blowup_factor", "max_wall_time", "gaussian.sigma", "refiner.eta", "refiner.clamp",
                          "thermalizer.sigma", "thermalizer.clamp", "acdm.clamp", "clean_conditioning.clamp",
                          "clean_conditioning.eta"))
    from sns.data.schema import SPLITS

    if cfg.split not in SPLITS:
        raise ValueError(f"unknown split {cfg.split!r}; valid choices: {list(SPLITS)}")
    check_cuda("device", cfg.device)
    members = 1 if cfg.get("ensemble") is None else int(cfg.ensemble)
    if members < 1:
        raise ValueError(f"ensemble must be an integer >= 1 (members per initial condition), got {members}")
    from sns.rollout import ON_FAILURE

    on_failure = cfg.get("on_failure", "stop")
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {list(ON_FAILURE)}, got {on_failure!r}")
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    device = torch.device(cfg.device)
    split_path = Path(cfg.data_dir) / f"{cfg.split}.zarr"
    data_attrs = check_store(split_path)
    ds = WindowDataset(split_path, history=1, horizon=1, stride=1)
    step, attrs = build_stepper(cfg, data_attrs, device, state_shape=tuple(ds[0][0].shape))
    attrs["conserve_mean"] = bool(cfg.get("conserve_mean", False))
    if attrs["conserve_mean"]:  # keep each channel's spatial mean of the previous state (fields)
        from sns.constraints import ConserveMean

        step = ConserveMean(step)
    from sns.precision import MixedPrecision, autocast_dtype

    precision = str(cfg.get("precision", "fp32"))
    if autocast_dtype(precision) is not None:  # networks under torch.autocast, states stay float32
        step = MixedPrecision(step, precision)
        attrs["precision"] = precision  # part of the run identity (absent for fp32: old stores resume)
    attrs.update({"data_dir": str(cfg.data_dir), "split": cfg.split, "start_frame": int(cfg.start_frame),
                  "norm_offset": data_attrs["norm_offset"], "norm_scale": data_attrs["norm_scale"],
                  "system": data_attrs["system"]})
    n = int(cfg.trajectories)
    if n < 1 or n > len(ds.traj_index):
        raise ValueError(f"trajectories must be in [1, {len(ds.traj_index)}] for {split_path}, got {n}")
    if not 0 <= int(cfg.start_frame) <= ds.n_time - 2:
        raise ValueError(f"start_frame must be in [0, {ds.n_time - 2}], got {cfg.start_frame}")
    x0 = torch.stack([ds[k * ds.per_traj + int(cfg.start_frame)][0] for k in range(n)]).to(device)
    if members > 1:  # row k * members + m: member m of initial condition k
        x0 = x0.repeat_interleave(members, dim=0)
        attrs.update(ensemble=members, initial_conditions=n)
    dt = data_attrs.get("dt")
    dt = float(dt) * int(data_attrs.get("save_every", 1)) if dt is not None else None
    identity = run_identity(attrs)
    out = cfg.out if cfg.get("out") is not None else default_out(cfg, attrs, identity)
    result = rollout(step, x0, int(cfg.n_steps), store=out, chunk=int(cfg.chunk), dt=dt, attrs=attrs,
                     seed=int(cfg.seed), data_rms=float(state_rms(x0).mean()),
                     blowup_factor=float(cfg.blowup_factor), max_wall_time=cfg.max_wall_time,
                     overwrite=bool(cfg.overwrite), identity=identity, on_failure=str(on_failure))
    log.info("rollout %s: %d steps, status %s%s, %.1f s, calls/step %s -> %s", attrs["method"], result.steps_done, result.status, f" ({result.message})" if result.message else "",
             result.wall_time, result.calls_mean, result.path)
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="rollout")
def main(cfg: DictConfig) -> None:
    try:
        run_rollout(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"sns-rollout: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
