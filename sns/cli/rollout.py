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
                    state_shape: tuple[int, ...] | None) -> tuple[Any, dict[str, Any]]:
    """The surrogate of ``cfg.surrogate`` (sns export, torch.export / TorchScript file or import path,
    :func:`sns.surrogates.loading.load_surrogate`) as a stepper on the data set's normalised states:
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
    return surrogate, attrs


METHODS = ("surrogate", "sns", "acdm", "thermalizer", "pde_refiner")
SETTINGS = {"surrogate": "gaussian", "sns": "refiner", "acdm": "acdm", "thermalizer": "thermalizer",
            "pde_refiner": "pde_refiner"}  # method -> attrs key of its settings


def build_stepper(cfg: DictConfig, data_attrs: dict[str, Any], device: Any,
                  state_shape: tuple[int, ...] | None = None) -> tuple[Any, dict[str, Any]]:
    """The stepper of ``cfg`` and the attrs that describe it.

    The method follows from the files: no ``denoiser`` -> the surrogate alone (Gaussian
    approximation, optional noise ``gaussian.sigma``); otherwise the ``method`` recorded in the
    denoiser's file (``sns``, ``acdm``, ``thermalizer``, ``pde_refiner``; files written before
    baselines existed are ``sns``).  SNS and the Thermalizer wrap the surrogate; ACDM and
    PDE-Refiner are their own forecasters and refuse one.  With ``state_shape`` (one state of the
    data set), a model file made for other states is refused (:func:`sns.cli.check_fits`).
    """
    from sns.baselines import ACDM, GaussianApproximation, PDERefiner, Thermalizer
    from sns.export import file_sha256, load_model, load_schedule
    from sns.refine import SNSRefiner

    surrogate = None
    attrs: dict[str, Any] = {"surrogate": None, "denoiser": None, "surrogate_sha256": None,
                             "denoiser_sha256": None}
    if cfg.surrogate is not None:
        surrogate, sur_attrs = _load_surrogate(cfg, data_attrs, device, state_shape)
        attrs.update(sur_attrs)
    if cfg.denoiser is None:
        if surrogate is None:
            raise ValueError("nothing to roll out: give surrogate=<file> and/or denoiser=<file>")
        g = OmegaConf.to_container(cfg.gaussian, resolve=True)
        attrs.update(method="surrogate", gaussian=g)
        return GaussianApproximation(surrogate, sigma=float(g["sigma"])), attrs
    model, d_extra = load_model(cfg.denoiser, device)
    if d_extra.get("task") != "denoiser":
        raise ValueError(f"{cfg.denoiser} holds a {d_extra.get('task')!r} model, expected a diffusion model "
                         "(sns-train task=denoiser|acdm|thermalizer|pde_refiner)")
    _check_norm(str(cfg.denoiser), d_extra, data_attrs)
    if state_shape is not None and getattr(model, "state_shape", None) is not None:
        check_fits(model, state_shape, f"denoiser {cfg.denoiser}", f"data set {cfg.data_dir}")
    method = d_extra.get("method", "sns")
    if method not in METHODS:
        raise ValueError(f"{cfg.denoiser} records method {method!r}; valid choices: {METHODS}")
    attrs.update(denoiser=str(cfg.denoiser), denoiser_sha256=file_sha256(cfg.denoiser), method=method)
    needs_surrogate = method in ("sns", "thermalizer")
    if needs_surrogate and surrogate is None:
        raise ValueError(f"method {method!r} refines a surrogate's proposals: give surrogate=<file>")
    if not needs_surrogate and surrogate is not None:
        raise ValueError(f"method {method!r} forecasts on its own and uses no surrogate: set surrogate=null")
    if method == "sns":
        r = OmegaConf.to_container(cfg.refiner, resolve=True)
        try:
            fixed = tuple(int(v) for v in r["fixed_levels"]) if r.get("fixed_levels") is not None else None
        except (TypeError, ValueError):
            raise ValueError(f"refiner.fixed_levels must be two integer table levels [i2, i1] or null, got "
                             f"{r['fixed_levels']!r}") from None
        skip = r.get("skip_threshold")
        skip = tuple(int(v) for v in skip) if isinstance(skip, (list, tuple)) else skip
        if isinstance(r["proposal_sigma"], str):
            if r["proposal_sigma"] != "auto":
                raise ValueError(f"refiner.proposal_sigma must be a number or 'auto', got {r['proposal_sigma']!r}")
            r["proposal_sigma"] = _auto_proposal_sigma(Path(cfg.data_dir) / "valid.zarr", surrogate, device)
            r["proposal_sigma_auto"] = True  # sqrt(2) x the surrogate's one-step RMSE on the valid split
        guard = None
        if r.get("state_guard") not in (None, False):
            guard = _state_guard(Path(cfg.data_dir), load_schedule(d_extra), r["state_guard"])
            r["state_guard_threshold"] = guard.threshold  # recorded: the distance beyond which it fires
        step: Any = SNSRefiner(model, load_schedule(d_extra), surrogate=surrogate, path=r["path"],
                               proposal_sigma=float(r["proposal_sigma"]), skip_threshold=skip,
                               fixed_levels=fixed, clamp=r.get("clamp"), n_moves=r.get("n_moves"),
                               eta=float(r.get("eta", 1.0)), couple_levels=bool(r.get("couple_levels", False)),
                               state_guard=guard)
        attrs["refiner"] = r
    elif method == "thermalizer":
        t = OmegaConf.to_container(cfg.thermalizer, resolve=True)
        step = Thermalizer(model, load_schedule(d_extra), surrogate, start=int(t["start"]), stop=int(t["stop"]),
                           limit=None if t.get("limit") is None else int(t["limit"]), sigma=float(t["sigma"]),
                           clamp=t.get("clamp"))
        attrs["thermalizer"] = t
    elif method == "acdm":
        a = OmegaConf.to_container(cfg.acdm, resolve=True)
        step = ACDM(model, load_schedule(d_extra), clamp=a.get("clamp"))
        attrs["acdm"] = a
    else:
        p = d_extra.get("pde_refiner") or {}
        step = PDERefiner(model, int(p.get("n_refinement_steps", 3)), float(p.get("min_noise_std", 4e-7)))
        attrs["pde_refiner"] = p
    return step.to(device), attrs


def run_identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """What identifies a rollout beyond what :func:`sns.rollout.rollout` sees itself (initial
    states, seed, n_steps, guards): the content hashes of the model files, the method and its
    settings (noise, refiner / baseline options, conserve_mean).  A store of another identity
    is not resumed."""
    keys = ("method", "surrogate_sha256", "surrogate_units", "surrogate_kwargs", "denoiser_sha256",
            "conserve_mean", "precision", *SETTINGS.values())
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


def _auto_proposal_sigma(valid: Path, surrogate: Any, device: Any, max_pairs: int = 4096) -> float:
    """:func:`sns.refine.calibrate_proposal_sigma` on up to ``max_pairs`` consecutive pairs of the
    data set's valid split (evenly spread, normalised like the training data)."""
    import torch

    from sns.data.io import check_store
    from sns.data.windows import WindowDataset
    from sns.refine import calibrate_proposal_sigma

    check_store(valid)
    ds = WindowDataset(valid, history=1, horizon=1, stride=1)
    idx = torch.linspace(0, len(ds) - 1, min(len(ds), max_pairs)).long().unique()
    w = torch.stack([ds[int(i)] for i in idx]).to(device)  # (N, 2, *state)
    return calibrate_proposal_sigma(surrogate, w[:, 0], w[:, 1])


def _split_states(path: Path, max_states: int) -> Any:
    """Up to ``max_states`` states of a split store (evenly spread over its frames), normalised
    like the training data, ``(N, D)``."""
    import torch

    from sns.data.io import check_store
    from sns.data.windows import WindowDataset

    check_store(path)
    ds = WindowDataset(path, history=1, horizon=1, stride=1, in_memory=True)
    if ds[0].ndim > 2:  # (T, C, H, W): any field (one channel, layers, imported channels), not only (T, 1, H, W)
        raise ValueError("refiner.state_guard is for vector systems (nearest neighbours of field states "
                         "measure the sampling floor, not a drift); set refiner.state_guard=false")
    idx = torch.linspace(0, len(ds) - 1, min(len(ds), max_states)).long().unique()
    return torch.stack([ds[int(i)][0] for i in idx])


def _state_guard(data_dir: Path, schedule: Any, setting: Any, max_states: int = 100_000) -> Any:
    """:class:`sns.refine.NearestStateGuard` calibrated on the data set: reference states from the
    train split, the threshold (``setting``: ``true`` for the 99.9% quantile, or a quantile in
    (0, 1]) and the level table from the valid split (never the evaluation split)."""
    from sns.refine import NearestStateGuard

    if setting is True:
        quantile = 0.999
    elif isinstance(setting, (int, float)) and not isinstance(setting, bool) and 0.0 < float(setting) <= 1.0:
        quantile = float(setting)
    else:
        raise ValueError(f"refiner.state_guard must be true, false or a quantile in (0, 1], got {setting!r}")
    reference = _split_states(data_dir / "train.zarr", max_states)
    held_out = _split_states(data_dir / "valid.zarr", max_states)
    return NearestStateGuard.calibrate(schedule, reference, held_out, quantile=quantile)


def run_rollout(cfg: DictConfig) -> Any:
    """Build the stepper of ``cfg`` and roll it out; returns the :class:`sns.rollout.RolloutResult`."""
    import torch

    from sns.data.io import check_store
    from sns.data.windows import WindowDataset
    from sns.rollout import rollout, state_rms

    check_missing(cfg)
    check_numbers(cfg, ints=("seed", "n_steps", "trajectories", "start_frame", "chunk", "torch_threads", "ensemble",
                             "refiner.n_moves", "thermalizer.start", "thermalizer.stop", "thermalizer.limit"),
                  floats=("blowup_factor", "max_wall_time", "gaussian.sigma", "refiner.eta", "refiner.clamp",
                          "thermalizer.sigma", "thermalizer.clamp", "acdm.clamp"))
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
