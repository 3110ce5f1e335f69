"""`TwoLayerQG` against pyqg's `QGModel` (pyqg 0.7.2), float64, same initial condition.

Skipped unless pyqg is importable.  pyqg 0.7.2 builds only against numpy 1.x,
so it lives in its own virtual environment, next to (not inside) the project's::

    python3 -m venv /work/pyqg-venv
    P=/work/pyqg-venv/bin/pip
    $P install "numpy==1.26.*" "cython<3" pyfftw scipy
    $P install --no-index --no-deps torch && $P install torch==2.13.0   # CPU build on local disk
    $P install "setuptools<70" "setuptools_scm[toml]>=6.2,<8" wheel importlib_metadata
    $P install --no-build-isolation pyqg==0.7.2
    $P install "numpy==1.26.*" xarray pytest      # keep numpy at 1.26 (pyqg's ABI)
    $P install --no-deps -e /work/main
    cd /work/main && /work/pyqg-venv/bin/python -m pytest tests/test_reference_pyqg.py -q

(setuptools_scm is needed because ``--no-build-isolation`` skips pyqg's build
requirements; without it the sdist reports version 0.0.0 and pip refuses it.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pyqg = pytest.importorskip("pyqg")

from sns.systems.qg import JET_PARAMS, TwoLayerQG

NX = 64
PARAMS = {k: v for k, v in JET_PARAMS.items() if k not in ("nx", "n_coarse")}


def _pyqg_model(q0: np.ndarray) -> pyqg.QGModel:
    m = pyqg.QGModel(nx=NX, log_level=0, **PARAMS)
    m.q = np.ascontiguousarray(q0, dtype=np.float64)
    return m


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def eddying_state() -> np.ndarray:
    """A finite-amplitude state (1e-5 1/s PV anomalies at all scales): nonlinear terms matter."""
    rng = np.random.default_rng(1)
    q = 1e-5 * rng.standard_normal((2, NX, NX))
    q[1] *= 0.1
    return q


def test_matches_pyqg_from_its_initial_condition() -> None:
    """pyqg's own random initial condition, 200 steps (Euler, AB2, AB3...)."""
    np.random.seed(0)
    m = pyqg.QGModel(nx=NX, log_level=0, **PARAMS)
    q0 = m.q.copy()
    for _ in range(200):
        m._step_forward()
    sys = TwoLayerQG(nx=NX, n_coarse=None, dtype=torch.float64, **PARAMS)
    q = sys.step(torch.from_numpy(q0)[None], 200)[0].numpy()
    rel = _rel(q, m.q)
    print(f"pyqg IC, 200 steps: max rel diff {rel:.2e}")
    assert rel < 1e-11


def test_matches_pyqg_nonlinear_in_chunks(eddying_state: np.ndarray) -> None:
    """Finite-amplitude state, 300 steps: one pyqg run vs three chained `advance` calls."""
    m = _pyqg_model(eddying_state)
    for _ in range(300):
        m._step_forward()
    sys = TwoLayerQG(nx=NX, n_coarse=None, dtype=torch.float64, **PARAMS)
    q, hist = torch.from_numpy(eddying_state)[None], None
    for _ in range(3):
        q, hist = sys.advance(q, 100, hist)
    rel = _rel(q[0].numpy(), m.q)
    print(f"nonlinear state, 300 steps in 3 chunks: max rel diff {rel:.2e}")
    assert rel < 1e-10
    # the tendencies the history carries equal pyqg's
    assert _rel(hist.prev[0].numpy(), np.asarray(m.dqhdt_p)) < 1e-9
    # `step` carries the history too: chained `step` calls equal pyqg's run
    q_step = torch.from_numpy(eddying_state)[None]
    for _ in range(3):
        q_step = sys.step(q_step, 100)
    assert _rel(q_step[0].numpy(), m.q) < 1e-10
    # restarting with Euler at each chunk is a different integrator:
    # measurably off pyqg, though by far less than the state itself
    q_restart = torch.from_numpy(eddying_state)[None]
    for _ in range(3):
        q_restart = sys.advance(q_restart, 100)[0]
    rel_restart = _rel(q_restart[0].numpy(), m.q)
    assert 1e3 * rel < rel_restart < 0.1


def test_fixture_script_reproduces_committed_fixture(tmp_path) -> None:
    """``make_reference_fixtures.py qg`` makes the committed file (to round-off)."""
    import importlib.util
    import json
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures"
    spec = importlib.util.spec_from_file_location("mrf", fixtures / "make_reference_fixtures.py")
    mrf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mrf)
    assert mrf.QG_PARAMS == PARAMS
    mrf.make_qg(tmp_path / "q.npz")
    with np.load(tmp_path / "q.npz") as new, np.load(fixtures / "pyqg_qg.npz") as old:
        assert json.loads(str(new["meta"]))["params"] == json.loads(str(old["meta"]))["params"]
        assert _rel(new["q"], old["q"]) < 1e-12


def test_matches_pyqg_diagnostics(eddying_state: np.ndarray) -> None:
    """Inversion, kinetic energy, CFL and rhs agree with pyqg's after one step."""
    m = _pyqg_model(eddying_state)
    m._step_forward()  # fills ph, u, v and dqhdt for the state *before* the step
    sys = TwoLayerQG(nx=NX, n_coarse=None, dtype=torch.float64, **PARAMS)
    q0 = torch.from_numpy(eddying_state)[None]
    psi = sys.streamfunction(q0)[0].numpy()
    assert _rel(psi, m.ifft(np.asarray(m.ph))) < 1e-12
    rhs = sys.rhs(q0)[0].numpy()
    assert _rel(rhs, m.ifft(np.asarray(m.dqhdt_p))) < 1e-12
    m2 = _pyqg_model(eddying_state)
    m2._invert()
    u, v = sys.velocity(q0)
    assert _rel(u[0].numpy(), np.asarray(m2.u)) < 1e-12
    assert _rel(v[0].numpy(), np.asarray(m2.v)) < 1e-12
    # kinetic energy of the velocity fields (pyqg's _calc_ke sums the spectrum
    # instead, which also counts the Nyquist modes that the real fields lack)
    ke_layers = 0.5 * (np.asarray(m2.u) ** 2 + np.asarray(m2.v) ** 2).mean(axis=(1, 2))
    ke = (ke_layers * m2.Hi).sum() / m2.H
    assert sys.kinetic_energy(q0).item() == pytest.approx(ke, rel=1e-12)
    assert sys.cfl(q0).item() == pytest.approx(m2._calc_cfl(), rel=1e-12)
