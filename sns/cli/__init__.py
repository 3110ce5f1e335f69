"""Hydra entry points.  Only these modules read configs (conf/ at the repository root)."""

from pathlib import Path

#: Absolute path of the repository's conf/ directory (the package is installed editable).
CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "conf")


def check_numbers(cfg, ints=(), floats=()) -> None:
    """Raise ``ValueError`` naming the key and the value when a config entry that must be an
    integer (``ints``) or a number (``floats``) is not one (null and missing keys pass), so a
    bad command-line value fails before anything is built or written."""
    from omegaconf import OmegaConf

    for keys, kind in ((ints, "an integer"), (floats, "a number")):
        for key in keys:
            value = OmegaConf.select(cfg, key, default=None)
            if value is None:
                continue
            try:
                if isinstance(value, bool):
                    ok = False
                elif kind == "an integer":
                    ok = float(value).is_integer() if isinstance(value, float) else int(value) is not None
                else:
                    ok = float(value) is not None
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"{key} must be {kind}, got {value!r}")


def check_cuda(key: str, value) -> None:
    """Raise ``ValueError`` when ``value`` (a device / accelerator setting) asks for CUDA and no
    CUDA device is available, or when a ``device`` setting (a key named ``device``; accelerators
    take Lightning's names) is not a torch device string."""
    import torch

    if str(value).split(":")[0] in ("cuda", "gpu") and not torch.cuda.is_available():
        raise ValueError(f"{key}={value}: no CUDA device is available; use cpu")
    if key.rsplit(".", 1)[-1] == "device":
        try:
            torch.device(str(value))
        except RuntimeError:
            raise ValueError(f"{key}={value} is not a torch device; valid choices: cpu, cuda, cuda:<index>, "
                             "mps, ...") from None


def check_missing(cfg) -> None:
    """Raise ``ValueError`` naming the mandatory settings (``???`` in the config) left unset."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"missing mandatory setting(s) {', '.join(missing)}: give them on the command line "
                         f"(e.g. {missing[0]}=...)")


def instantiation_message(err: Exception) -> str:
    """One line for Hydra's ``InstantiationException``: ``<config key>: <the constructor's error>``."""
    import re

    found = re.search(r"full_key: (\S+)", str(err))
    cause = err.__cause__
    if cause is None:
        text = " ".join(str(err).split())
    else:
        text = str(cause) if isinstance(cause, ValueError) else f"{type(cause).__name__}: {cause}"
    return f"{found.group(1)}: {text}" if found else text


def check_fits(model, state_shape: tuple[int, ...], what: str, data: str = "the data set") -> None:
    """Raise ``ValueError`` naming ``what`` (a file or config key) and ``data`` when ``model`` is made
    for states of another shape than ``state_shape`` (one state of ``data``, no batch axis).

    A pair denoiser (``state_shape`` attribute) is compared directly; any other network is called
    once on a zero state, in ``eval`` mode, without gradients and with the RNG state restored
    afterwards, so the check changes nothing (no random draw, no statistics update)."""
    import torch

    want = getattr(model, "state_shape", None)
    if want is not None:
        if tuple(want) != tuple(state_shape):
            raise ValueError(f"{what} is made for states of shape {tuple(want)} but the states of {data} have "
                             f"shape {tuple(state_shape)} (another system or dimension?)")
        return
    param = next(iter(model.parameters()), None)
    x = torch.zeros((1, *state_shape), dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")
    training = model.training
    try:
        with torch.random.fork_rng(devices=[x.device.index or 0] if x.device.type == "cuda" else []), torch.no_grad():
            model.eval()
            model(x)
    except (ValueError, RuntimeError, IndexError) as err:
        raise ValueError(f"{what} does not fit the states of {data}, of shape {tuple(state_shape)} (another "
                         f"system or dimension?): {err}") from None
    finally:
        model.train(training)
