"""Model specifications: plain, JSON-able dicts that rebuild a network.

A *spec* is ``{"kind": <name>, "preset": <name or None>, "kwargs": {...}}``:

* ``kind`` picks the constructor (``MODEL_KINDS``);
* ``preset`` (optional) names a configuration of :func:`sns.nets.unet.unet_config` /
  :func:`sns.nets.unet.surrogate_unet_config` (``paper-kolmogorov``, ``cpu-qg``, ``tiny``...)
  whose keyword arguments are the base;
* ``kwargs`` override or complete them.

:func:`resolve_spec` expands the preset into the full keyword arguments (tuples become
lists), so a resolved spec alone rebuilds the model (it is what checkpoints and exported
files store); :func:`build_model` builds it.  Training modules, the export format and
the rollout entry point all go through these two functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = ["MODEL_KINDS", "build_model", "model_task", "resolve_spec"]


def _residual_unet(**kw: Any) -> nn.Module:
    from sns.nets.unet import UNet
    from sns.surrogates.residual import ResidualSurrogate

    conserve_mean = kw.pop("conserve_mean", False)
    return ResidualSurrogate(UNet(**kw), conserve_mean=conserve_mean)


def _residual_mlp(**kw: Any) -> nn.Module:
    from sns.surrogates.residual import ResidualSurrogate, VectorMLP

    return ResidualSurrogate(VectorMLP(**kw))


def _blind_pair_unet(**kw: Any) -> nn.Module:
    from sns.nets.unet import BlindPairUNet

    return BlindPairUNet(**kw)


def _explicit_pair_unet(**kw: Any) -> nn.Module:
    from sns.nets.unet import ExplicitPairUNet

    return ExplicitPairUNet(**kw)


def _mlp_pair(**kw: Any) -> nn.Module:
    from sns.nets.mlp import MLPPairDenoiser

    return MLPPairDenoiser(**kw)


def _neural_ode(**kw: Any) -> nn.Module:
    from sns.surrogates.neural_ode import NeuralODE

    return NeuralODE(**kw)


def _surrogate_preset(name: str) -> dict[str, Any]:
    from sns.nets.unet import surrogate_unet_config

    return surrogate_unet_config(name)


def _pair_preset(variant: str) -> Callable[[str], dict[str, Any]]:
    def preset(name: str) -> dict[str, Any]:
        from sns.nets.unet import unet_config

        return unet_config(name, variant)

    return preset


#: kind -> (constructor, preset lookup or None, task: "surrogate" | "denoiser" | ...)
MODEL_KINDS: dict[str, tuple[Callable[..., nn.Module], Callable[[str], dict] | None, str]] = {
    "residual_unet": (_residual_unet, _surrogate_preset, "surrogate"),
    "residual_mlp": (_residual_mlp, None, "surrogate"),
    "blind_pair_unet": (_blind_pair_unet, _pair_preset("blind"), "denoiser"),
    "explicit_pair_unet": (_explicit_pair_unet, _pair_preset("explicit"), "denoiser"),
    "mlp_pair": (_mlp_pair, None, "denoiser"),
    "neural_ode": (_neural_ode, None, "neural_ode"),
}


def _plain(value: Any) -> Any:
    """Tuples -> lists, mappings -> dicts, recursively (JSON-able containers)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _kind(spec: Mapping[str, Any]) -> str:
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise ValueError(f"a model spec is a mapping with a 'kind' key, got {spec!r}")
    kind = spec["kind"]
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; valid choices: {sorted(MODEL_KINDS)}")
    unknown = set(spec) - {"kind", "preset", "kwargs"}
    if unknown:
        raise ValueError(f"unknown model spec keys {sorted(unknown)}; valid keys: kind, preset, kwargs")
    return kind


def resolve_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``{"kind", "kwargs"}`` with the preset expanded and ``kwargs`` applied on top."""
    kind = _kind(spec)
    _, preset_fn, _ = MODEL_KINDS[kind]
    preset = spec.get("preset")
    base: dict[str, Any] = {}
    if preset is not None:
        if preset_fn is None:
            raise ValueError(f"model kind {kind!r} has no presets; give its arguments in kwargs (preset: null)")
        base = preset_fn(preset)
    return {"kind": kind, "kwargs": _plain({**base, **dict(spec.get("kwargs") or {})})}


def model_task(spec: Mapping[str, Any]) -> str:
    """``"surrogate"`` or ``"denoiser"``: what the model of ``spec`` is."""
    return MODEL_KINDS[_kind(spec)][2]


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """Build the network of ``spec`` (resolved or not)."""
    resolved = resolve_spec(spec)
    ctor = MODEL_KINDS[resolved["kind"]][0]
    try:
        return ctor(**resolved["kwargs"])
    except TypeError as err:  # unknown / missing constructor argument
        raise ValueError(f"cannot build model kind {resolved['kind']!r} from {resolved['kwargs']}: {err}") from err
