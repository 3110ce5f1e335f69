"""Paths as data: validation, constructors, and the heterogeneous compacted traversal."""

import pytest
import torch

from sns.diffusion import (
    Path,
    acdm_path,
    clean_conditioning_path,
    cosine_schedule,
    make_path,
    path_A,
    path_B,
    path_C,
    path_fix_s2,
    thermalizer_path,
    traverse,
)
from sns.nets.mlp import MLPPairDenoiser


def test_validation_errors_name_the_offender():
    with pytest.raises(ValueError, match=r"sample 0: s2 increases from point 1 \(3, 1\) to point 2 \(3, 2\).*S = 5"):
        Path([(3, 2), (3, 1), (3, 2), (0, 0)], 5)
    with pytest.raises(ValueError, match=r"s1 jumps by -2 from point 0 \(3, 0\).*unless strided=True"):
        Path([(3, 0), (1, 0), (0, 0)], 5)
    assert Path([(3, 0), (1, 0), (0, 0)], 5, strided=True).n_calls.tolist() == [2]
    with pytest.raises(ValueError, match=r"s2 increases"):
        Path([(3, 0), (1, 2), (0, 0)], 5, strided=True)
    with pytest.raises(ValueError, match="n_moves must be a positive integer"):
        path_A(3, 3, 5, n_moves=0)
    with pytest.raises(ValueError, match=r"ends at \(s1, s2\) = \(1, 0\), expected \(0, 0\) \(S = 5\)"):
        Path([(2, 0), (1, 0)], 5)
    with pytest.raises(ValueError, match=r"point 0 has s1 = 6, outside \[0, S\] = \[0, 5\]"):
        Path([(6, 0), (5, 0)], 5)
    with pytest.raises(ValueError, match="must be integers"):
        Path(torch.zeros(1, 2), 5)
    with pytest.raises(ValueError, match=r"start s2\[1\] = 11 is outside the coordinates \[0, S\] = \[0, 10\]"):
        path_A(torch.tensor([1, 2]), torch.tensor([3, 11]), 10)
    with pytest.raises(ValueError, match=r"stop\[0\] = 5 exceeds start\[0\] = 4"):
        thermalizer_path(4, 5, 10)
    with pytest.raises(ValueError, match="unknown path 'D'"):
        make_path("D", 1, 1, 10)
    # a deliberate early stop is fine when stated
    assert Path([(2, 5), (1, 5)], 5, end=(1, 5)).n_calls.tolist() == [1]


def test_constructors_shapes_endpoints_and_costs():
    S = 10
    s1, s2 = torch.tensor([7, 2, 0, 5]), torch.tensor([3, 6, 0, 5])
    for make, calls in ((path_A, s1 + s2), (path_B, s1 + s2), (path_C, torch.maximum(s1, s2)), (path_fix_s2, s1)):
        p = make(s1, s2, S)
        assert p.points.shape == (4, int(calls.max()) + 1, 2)
        assert p.start.tolist() == torch.stack([s1, s2], -1).tolist()
        assert p.n_calls.tolist() == calls.tolist()
    a = path_A(7, 3, S).points[0]
    assert a[3].tolist() == [7, 0] and a[-1].tolist() == [0, 0]  # left first: x_{t-1} clean after 3 moves
    b = path_B(7, 3, S).points[0]
    assert b[7].tolist() == [0, 3]  # down first
    c = path_C(7, 3, S).points[0]
    assert c[4].tolist() == [3, 3] and c[5].tolist() == [2, 2]  # to the diagonal, then along it
    f = path_fix_s2(s1, s2, S)
    assert f.end.tolist() == [[0, 3], [0, 6], [0, 0], [0, 5]] and (f.points[:, :, 1] == s2[:, None]).all()
    cc = clean_conditioning_path(S, batch=3)
    assert cc.points.shape == (3, S + 1, 2) and (cc.points[:, :, 1] == 0).all() and cc.start[0].tolist() == [S, 0]
    d = acdm_path(S)
    assert (d.points[0, :, 0] == d.points[0, :, 1]).all() and d.n_calls.tolist() == [S]
    t = thermalizer_path(torch.tensor([6, 10]), 4, S)
    assert t.end.tolist() == [[4, S], [4, S]] and t.n_calls.tolist() == [2, 6]
    assert (t.points[:, :, 1] == S).all() and t.points[1, -1].tolist() == [4, S]


def test_strided_constructors():
    """Each leg in at most n_moves near-even strides; same start, end and shape of path as unit steps."""
    S, n = 100, 3
    s1, s2 = torch.tensor([70, 2, 0, 50, 1]), torch.tensor([30, 60, 0, 50, 0])
    for name, legs in (("A", (s1, s2)), ("B", (s1, s2)), ("C", None), ("fix_s2", (s1,))):
        p = make_path(name, s1, s2, S, n_moves=n)
        unit = make_path(name, s1, s2, S)
        assert p.strided and p.start.tolist() == unit.start.tolist() and p.end.tolist() == unit.end.tolist()
        if legs is not None:  # one leg per coordinate that is not already 0
            want = sum(torch.minimum(v, torch.tensor(n)) for v in legs)
            assert p.n_calls.tolist() == want.tolist(), name
        else:
            assert (p.n_calls <= 2 * n).all() and (p.n_calls <= unit.n_calls).all()
        assert (p.n_calls <= unit.n_calls).all()
    a = path_A(70, 30, S, n_moves=3).points[0].tolist()
    assert a == [[70, 30], [70, 20], [70, 10], [70, 0], [47, 0], [24, 0], [0, 0]]
    c = path_C(10, 40, S, n_moves=2).points[0].tolist()
    assert c == [[10, 40], [10, 25], [10, 10], [5, 5], [0, 0]]  # to the diagonal, then along it
    wide = path_A(7, 3, S, n_moves=100).points[0].unique_consecutive(dim=0)  # n_moves >= levels: the unit path
    assert wide.tolist() == path_A(7, 3, S).points[0].tolist()
    sub = path_A(torch.tensor([5, 0]), torch.tensor([0, 1]), S, n_moves=2)[1]  # a sub-batch keeps its moves
    assert sub.n_calls.tolist() == [1] and sub.points[0, -1].tolist() == [0, 0]


class CountingDenoiser(torch.nn.Module):
    """Wraps a pair denoiser and records the batch size of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.sizes = inner, []
        self.n_levels, self.state_shape, self.blind = inner.n_levels, inner.state_shape, inner.blind

    def forward(self, x_prev, x_next, s2=None, s1=None):
        self.sizes.append(x_prev.shape[0])
        return self.inner(x_prev, x_next, s2, s1)


@pytest.mark.parametrize("n_moves", [None, 2])
@pytest.mark.parametrize("blind", [True, False])
@pytest.mark.parametrize("name", ["A", "B", "C", "fix_s2"])
def test_heterogeneous_batch_equals_one_by_one(name, blind, n_moves):
    S, D = 12, 3
    torch.manual_seed(0)
    net = CountingDenoiser(MLPPairDenoiser(D, S, width=32, n_enc=1, n_dec=1, blind=blind).eval())
    sch = cosine_schedule(S)
    s1, s2 = torch.tensor([5, 0, 12, 3, 1]), torch.tensor([2, 4, 12, 0, 1])
    path = make_path(name, s1, s2, S, n_moves)
    g = torch.Generator().manual_seed(3)
    xp, xn = torch.randn(5, D, generator=g), torch.randn(5, D, generator=g)
    gens = [torch.Generator().manual_seed(10 + b) for b in range(5)]
    r = traverse(net, sch, xp, xn, path, generator=gens)
    # compaction: one call per step, on the active samples only
    assert sum(net.sizes) == int(path.n_calls.sum()) and r.calls.tolist() == path.n_calls.tolist()
    if n_moves is None:  # unit paths move every sample at every point until its end
        assert r.network_calls == int(path.n_calls.max()) == len(net.sizes)
        assert net.sizes[0] == int((path.n_calls > 0).sum())
        assert net.sizes[-1] == int((path.n_calls == path.n_calls.max()).sum())
    for b in range(5):
        one = traverse(net, sch, xp[b : b + 1], xn[b : b + 1], path[b], generator=[torch.Generator().manual_seed(10 + b)])
        torch.testing.assert_close(r.x_next[b : b + 1], one.x_next, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r.x_prev[b : b + 1], one.x_prev, rtol=1e-5, atol=1e-5)
    assert (r.x_prev[path.end[:, 1] > 0] == xp[path.end[:, 1] > 0]).all()  # fix_s2 keeps x_{t-1}


def test_traverse_errors():
    S = 6
    net = MLPPairDenoiser(2, S, width=8)
    sch = cosine_schedule(S)
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="path holds 2 sample paths for a batch of 3"):
        traverse(net, sch, x, x, path_A(torch.tensor([1, 2]), 1, S))
    with pytest.raises(ValueError, match="path has S=6 but the schedule has S=7"):
        traverse(net, cosine_schedule(7), x, x, path_A(1, 1, S))
    with pytest.raises(ValueError, match=r"expects states of shape \(B, 2\)"):
        traverse(net, sch, torch.zeros(3, 4), torch.zeros(3, 4), path_A(1, 1, S))
