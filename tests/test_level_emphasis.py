"""Training emphasis on a band of levels (``pair_dsm_loss(level_weights=...)``, issue 14).

Two properties: the levels are drawn from the given distribution, and the level heads'
cross-entropy is logit-adjusted, so a head trained with emphasis still reads levels under a
*uniform* prior.  The second is checked where the answer is known in closed form: a head whose
logits are free constants ``b`` (no input) minimises ``E_{i ~ p}[-log softmax(b + log p)_i]``
at ``b = const`` (uniform), whereas plain CE drives ``softmax(b)`` to ``p``.
"""

import pytest
import torch
from torch import nn

from sns.diffusion import cosine_schedule, emphasis_weights, pair_dsm_loss
from sns.nets.base import DenoiserOutput, PairDenoiser

S, D = 40, 3


class ConstantHeads(PairDenoiser):
    """Zero noise prediction and input-independent level logits ``b`` (learnable); records the
    levels it was called with."""

    blind = True

    def __init__(self) -> None:
        super().__init__()
        self.n_levels, self.state_shape = S, (D,)
        self.b2 = nn.Parameter(torch.zeros(S))
        self.b1 = nn.Parameter(torch.zeros(S))
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x_prev, x_next, i2=None, i1=None, **_):
        self.seen.append((i2.clone(), i1.clone()))
        B = x_prev.shape[0]
        return DenoiserOutput(torch.zeros_like(x_prev), torch.zeros_like(x_next),
                              self.b2.expand(B, S), self.b1.expand(B, S))

    def estimate_levels(self, x_prev, x_next):
        B = x_prev.shape[0]
        return self.b2.expand(B, S), self.b1.expand(B, S)


def test_emphasis_weights():
    w = emphasis_weights(S, 10, 19, 4.0)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (w[10:20] / w[0]).allclose(torch.full((10,), 4.0, dtype=w.dtype))
    assert w[:10].eq(w[0]).all() and w[20:].eq(w[0]).all()
    assert emphasis_weights(S, 0, S - 1, 3.0).allclose(torch.full((S,), 1 / S, dtype=w.dtype))
    for bad in ((-1, 5, 2.0), (5, 4, 2.0), (0, S, 2.0), (0, 5, 0.0), (0, 5, float("inf"))):
        with pytest.raises(ValueError):
            emphasis_weights(S, *bad)


@pytest.mark.parametrize("levels", ["independent", "diagonal", "unconditional"])
def test_levels_are_drawn_from_the_weights(levels):
    net, w = ConstantHeads(), emphasis_weights(S, 10, 19, 4.0)
    x = torch.zeros(20_000, D)
    pair_dsm_loss(net, cosine_schedule(S), x, x, generator=torch.Generator().manual_seed(0), levels=levels,
                  level_weights=w)
    i2, i1 = net.seen[-1]
    band = ((i1 >= 10) & (i1 <= 19)).float().mean().item()
    assert band == pytest.approx(w[10:20].sum().item(), abs=0.015)  # 40/70 = 0.571; binomial std 0.0035
    if levels == "independent":
        assert ((i2 >= 10) & (i2 <= 19)).float().mean().item() == pytest.approx(band, abs=0.02)
        assert (i2 != i1).float().mean() > 0.9  # drawn independently
    elif levels == "diagonal":
        assert torch.equal(i2, i1)
    else:
        assert i2.eq(S - 1).all()


def _fit_constant_heads(adjust: bool) -> torch.Tensor:
    """softmax of the i1 head after fitting under emphasis (adjusted CE, or plain CE by hand)."""
    torch.manual_seed(0)
    net, w = ConstantHeads(), emphasis_weights(S, 10, 19, 4.0)
    sch, g = cosine_schedule(S), torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x = torch.zeros(4096, D)
    for _ in range(400):
        if adjust:
            loss, _ = pair_dsm_loss(net, sch, x, x, lambda_ce=1.0, generator=g, level_weights=w)
        else:  # what training on emphasised labels would do without the adjustment
            i1 = torch.multinomial(w.float(), 4096, replacement=True, generator=g)
            loss = nn.functional.cross_entropy(net.b1.expand(4096, S), i1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.b1.detach().softmax(-1).double()


def test_logit_adjustment_keeps_the_heads_uniform_prior():
    w = emphasis_weights(S, 10, 19, 4.0)
    uniform = torch.full((S,), 1 / S, dtype=torch.float64)
    tv = lambda p, q: 0.5 * (p - q).abs().sum().item()
    assert tv(w, uniform) > 0.3  # the emphasis is strong: 0.32
    adjusted = _fit_constant_heads(adjust=True)
    plain = _fit_constant_heads(adjust=False)
    assert tv(adjusted, uniform) < 0.05
    assert tv(plain, w) < 0.05  # the control: plain CE learns the sampling prior


def test_uniform_weights_leave_the_heads_loss_unadjusted():
    """With uniform weights ``log p`` is a constant shift of every logit: the CE parts are the
    plain CE of the levels drawn."""
    net = ConstantHeads()
    with torch.no_grad():
        net.b1.copy_(torch.randn(S))
        net.b2.copy_(torch.randn(S))
    x = torch.randn(512, D)
    _, parts = pair_dsm_loss(net, cosine_schedule(S), x, x, generator=torch.Generator().manual_seed(3),
                             level_weights=torch.ones(S))
    i2, i1 = net.seen[-1]
    with torch.no_grad():
        ce_i2 = nn.functional.cross_entropy(net.b2.expand(512, S), i2)
        ce_i1 = nn.functional.cross_entropy(net.b1.expand(512, S), i1)
    assert parts["ce_i2"].item() == pytest.approx(ce_i2.item(), rel=1e-5)
    assert parts["ce_i1"].item() == pytest.approx(ce_i1.item(), rel=1e-5)


def test_bad_level_weights():
    net, x, sch = ConstantHeads(), torch.zeros(8, D), cosine_schedule(S)
    for bad in (torch.ones(S - 1), -torch.ones(S), torch.zeros(S), torch.full((S,), float("nan"))):
        with pytest.raises(ValueError, match="level_weights"):
            pair_dsm_loss(net, sch, x, x, level_weights=bad)


def test_module_option():
    from sns.training import PairDenoiserModule

    spec = {"kind": "mlp_pair", "kwargs": {"dim": D, "n_levels": 10, "width": 16, "n_enc": 1, "n_dec": 1}}
    m = PairDenoiserModule(spec, n_levels=10, level_emphasis={"low": 2, "high": 4, "factor": 3.0})
    assert m.level_weights[2:5].sum().item() == pytest.approx(9 / 16)
    assert PairDenoiserModule(spec, n_levels=10).level_weights is None
    with pytest.raises(ValueError, match="low, high, factor"):
        PairDenoiserModule(spec, n_levels=10, level_emphasis={"low": 2, "high": 4})
    with pytest.raises(ValueError, match="emphasis band"):
        PairDenoiserModule(spec, n_levels=10, level_emphasis={"low": 2, "high": 10, "factor": 2})
    batch = torch.randn(4, 2, D)
    assert m.training_step(batch, 0).isfinite()
