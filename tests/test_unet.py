"""Tests of the periodic U-Nets (sns.nets.unet) and the embeddings (sns.nets.embeddings)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sns.nets.base import PairDenoiser
from sns.nets.embeddings import LevelEmbedding, mlp, sinusoidal_embedding
from sns.nets.unet import (
    UNET_CONFIG_NAMES,
    BlindPairUNet,
    ExplicitPairUNet,
    ResBlock,
    UNet,
    surrogate_unet_config,
    unet_config,
)

# Parameter counts of the authors' models (github QiLiu6/SNS), counted by building them.
REF_PAIR_KOLMOGOROV = 79_249_442
REF_PAIR_QG = 238_509_540
REF_SURROGATE = {"paper-kolmogorov": 45_820_801, "paper-qg": 45_821_954}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shrink(cfg: dict, **over) -> dict:
    """A paper configuration at reduced width, keeping its levels, blocks and attention."""
    small = dict(cfg, dim=8, emb_dim=16, head_features=16, head_hidden=16, n_levels=10)
    small["state_shape"] = (cfg["state_shape"][0], 16, 16)
    if "estimator_dim" in cfg:
        small["estimator_dim"] = 4
    small.update(over)
    return small


def roll(x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    return torch.roll(x, shifts=shift, dims=(-2, -1))


# ----------------------------------------------------------------------------- embeddings


def test_sinusoidal_embedding_values_and_shapes():
    t = torch.tensor([0, 1, 7, 999])
    e = sinusoidal_embedding(t, 8)
    assert e.shape == (4, 8) and e.dtype == torch.float32
    # t = 0: cos = 1, sin = 0
    assert torch.equal(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    # first frequency is 1: entries cos(t), sin(t)
    assert torch.allclose(e[:, 0], torch.cos(t.float())) and torch.allclose(
        e[:, 4], torch.sin(t.float())
    )
    # last frequency is max_period^(-3/4)
    assert torch.allclose(e[2, 3], torch.cos(torch.tensor(7 * 10000.0 ** (-3 / 4))))
    # every row has unit norm per (cos, sin) pair -> norm sqrt(4)
    assert torch.allclose(e.norm(dim=1), torch.full((4,), 2.0))
    odd = sinusoidal_embedding(t, 9)
    assert odd.shape == (4, 9) and torch.all(odd[:, -1] == 0)
    # all 1000 levels get distinct codes
    codes = sinusoidal_embedding(torch.arange(1000), 64)
    assert torch.cdist(codes, codes).add(torch.eye(1000) * 10).min() > 1e-3
    with pytest.raises(ValueError, match="shape"):
        sinusoidal_embedding(torch.zeros(2, 1), 8)
    with pytest.raises(ValueError, match="dim"):
        sinusoidal_embedding(t, 0)


def test_mlp_and_level_embedding():
    net = mlp(3, 5, 2, n_layers=3, final_activation=True)
    assert [type(m).__name__ for m in net] == ["Linear", "SiLU", "Linear", "SiLU", "Linear", "SiLU"]
    emb = LevelEmbedding(6, out_dim=4)
    assert emb(torch.tensor([0, 3])).shape == (2, 4)
    with pytest.raises(ValueError, match="n_layers"):
        mlp(3, 5, 2, n_layers=0)


# ----------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    "name, ref", [("paper-kolmogorov", REF_PAIR_KOLMOGOROV), ("paper-qg", REF_PAIR_QG)]
)
def test_paper_pair_parameter_counts(name, ref):
    with torch.device("meta"):
        model = BlindPairUNet(**unet_config(name))
    count = n_params(model)
    assert abs(count / ref - 1) < 0.05, f"{name}: {count} parameters vs reference {ref}"
    cfg = unet_config(name)
    # pair input: 2C channels in, 2C out
    assert model.unet.in_channels == model.unet.out_channels == 2 * cfg["state_shape"][0]


@pytest.mark.parametrize("name", ["paper-kolmogorov", "paper-qg"])
def test_paper_surrogate_parameter_counts(name):
    with torch.device("meta"):
        model = UNet(**surrogate_unet_config(name))
    assert abs(n_params(model) / REF_SURROGATE[name] - 1) < 0.05


def test_cpu_configs_are_small():
    for name in ("cpu-kolmogorov", "cpu-qg"):
        for variant, cls in (("blind", BlindPairUNet), ("explicit", ExplicitPairUNet)):
            with torch.device("meta"):
                count = n_params(cls(**unet_config(name, variant)))
            assert 1e6 < count < 4e6, (name, variant, count)


# ----------------------------------------------------------------- shapes and equivariance


@pytest.mark.parametrize("name", UNET_CONFIG_NAMES)
@pytest.mark.parametrize("variant", ["blind", "explicit"])
def test_shapes_and_shift_equivariance(name, variant):
    """Rolling both states by multiples of the stride rolls eps and leaves the logits unchanged."""
    torch.manual_seed(0)
    cfg = unet_config(name, variant)
    if name != "tiny":
        cfg = shrink(cfg)  # same topology at a size that runs in milliseconds
    cls = BlindPairUNet if variant == "blind" else ExplicitPairUNet
    model = cls(**cfg).eval()
    assert isinstance(model, PairDenoiser) and model.blind == (variant == "blind")
    c, h, w = model.state_shape
    b, s = 3, model.n_levels
    x_prev, x_next = torch.randn(b, c, h, w), torch.randn(b, c, h, w)
    s2, s1 = torch.tensor([0, 3, s - 1]), torch.tensor([s - 1, 0, 5])
    stride = 2 ** (len(cfg["dim_mults"]) - 1)
    shift = (stride, -3 * stride)
    with torch.no_grad():
        out = model(x_prev, x_next, s2, s1)
        rolled = model(roll(x_prev, shift), roll(x_next, shift), s2, s1)
    assert out.eps_prev.shape == out.eps_next.shape == (b, c, h, w)
    assert out.logits_i2.shape == out.logits_i1.shape == (b, s)
    assert torch.allclose(rolled.eps_prev, roll(out.eps_prev, shift), atol=1e-5, rtol=0)
    assert torch.allclose(rolled.eps_next, roll(out.eps_next, shift), atol=1e-5, rtol=0)
    assert torch.allclose(rolled.logits_i2, out.logits_i2, atol=1e-5, rtol=0)
    assert torch.allclose(rolled.logits_i1, out.logits_i1, atol=1e-5, rtol=0)
    assert out.eps_prev.std() > 1e-3  # not a trivially constant output


def test_plain_unet_shapes_and_equivariance():
    torch.manual_seed(0)
    net = UNet(
        3, 2, dim=8, dim_mults=(1, 2, 2), n_blocks=1, attn_levels=(1, 2), mid_attn=True, cond_dim=5
    ).eval()
    assert net.stride == 4
    x, cond = torch.randn(2, 3, 24, 16), torch.randn(2, 5)
    with torch.no_grad():
        y = net(x, cond)
        y_rolled = net(roll(x, (8, 4)), cond)
        y_other = net(x, torch.randn(2, 5))
    assert y.shape == (2, 2, 24, 16)
    assert torch.allclose(y_rolled, roll(y, (8, 4)), atol=1e-5, rtol=0)
    assert (y_other - y).abs().max() > 1e-4  # the conditioning reaches the output


def test_surrogate_configs_build_and_run():
    torch.manual_seed(0)
    for name in ("cpu-kolmogorov", "tiny"):
        net = UNet(**surrogate_unet_config(name))
        x = torch.randn(2, net.in_channels, 32, 32)
        assert net(x).shape == x.shape


# ----------------------------------------------------------------------------- conditioning


def test_blind_ignores_levels_and_conditions_only_the_decoder():
    torch.manual_seed(0)
    model = BlindPairUNet(**unet_config("tiny")).eval()
    x_prev, x_next = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        a = model(x_prev, x_next)
        b = model(x_prev, x_next, torch.tensor([0, 1]), torch.tensor([9, 2]))
        logits = model.estimate_levels(x_prev, x_next)
    assert torch.equal(a.eps_prev, b.eps_prev) and torch.equal(a.eps_next, b.eps_next)
    assert torch.equal(logits[0], a.logits_i2) and torch.equal(logits[1], a.logits_i1)
    encoder_blocks = [m for m in model.unet.encoder.modules() if isinstance(m, ResBlock)]
    decoder_blocks = [m for m in model.unet.decoder.modules() if isinstance(m, ResBlock)]
    assert encoder_blocks and all(m.cond_dim is None for m in encoder_blocks)
    assert decoder_blocks and all(m.cond_dim == 2 * 16 for m in decoder_blocks)
    # the head outputs do condition the decoder: perturbing the heads changes eps, not the encoder
    with torch.no_grad():
        model.head_s1.fc2.bias.add_(torch.linspace(-3, 3, model.n_levels))
        c = model(x_prev, x_next)
    assert (c.eps_next - a.eps_next).abs().max() > 1e-5
    assert torch.equal(c.logits_i2, a.logits_i2)


def test_explicit_depends_on_levels_and_requires_them():
    torch.manual_seed(0)
    model = ExplicitPairUNet(**unet_config("tiny", "explicit")).eval()
    x_prev, x_next = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        a = model(x_prev, x_next, torch.tensor([0, 5]), torch.tensor([1, 1]))
        b = model(x_prev, x_next, torch.tensor([0, 5]), torch.tensor([8, 1]))
        logits = model.estimate_levels(x_prev, x_next)
    # sample 0 changed its i1 and its output; sample 1 did not
    assert (a.eps_next[0] - b.eps_next[0]).abs().max() > 1e-4
    assert torch.equal(a.eps_next[1], b.eps_next[1])
    assert torch.equal(a.logits_i1, b.logits_i1) and torch.equal(logits[1], a.logits_i1)
    # all blocks, encoder included, see the levels
    assert all(m.cond_dim == 32 for m in model.unet.modules() if isinstance(m, ResBlock))
    with pytest.raises(ValueError, match="needs both levels i2 and i1"):
        model(x_prev, x_next)
    with pytest.raises(ValueError, match="i1=None"):
        model(x_prev, x_next, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(x_prev, x_next, torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        model(x_prev, x_next, torch.tensor([0, 10]), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- training sanity


def test_tiny_blind_net_overfits_one_batch():
    """Multi-noise-level DSM loss on one fixed noised batch drops well below its start."""
    torch.manual_seed(0)
    model = BlindPairUNet(**unet_config("tiny"))
    s_levels = model.n_levels
    x0 = torch.sin(torch.linspace(0, 2 * math.pi, 16))[None, None, :, None].expand(
        4, 1, 16, 16
    ) * torch.ones(4, 1, 1, 1)
    e2, e1 = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    s2, s1 = torch.tensor([0, 3, 6, 9]), torch.tensor([9, 6, 3, 0])
    abar = torch.linspace(0.99, 0.05, s_levels)
    a2, a1 = abar[s2].view(-1, 1, 1, 1), abar[s1].view(-1, 1, 1, 1)
    x_prev = a2.sqrt() * x0 + (1 - a2).sqrt() * e2
    x_next = a1.sqrt() * x0 + (1 - a1).sqrt() * e1
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(40):
        out = model(x_prev, x_next)
        loss = (
            F.mse_loss(out.eps_prev, e2)
            + F.mse_loss(out.eps_next, e1)
            + 0.1 * (F.cross_entropy(out.logits_i2, s2) + F.cross_entropy(out.logits_i1, s1))
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses[::10]


# ----------------------------------------------------------------------------- errors


def test_input_validation_errors():
    model = BlindPairUNet(**unet_config("tiny"))
    good = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"x_next of shape \(2, 2, 16, 16\)"):
        model(good, torch.randn(2, 2, 16, 16))
    with pytest.raises(ValueError, match="x_prev"):
        model.estimate_levels(torch.randn(2, 1, 8, 8), good)
    with pytest.raises(ValueError, match="not divisible by the total downsampling factor 4"):
        BlindPairUNet(**{**unet_config("paper-kolmogorov"), "state_shape": (1, 62, 64)})
    net = UNet(1, 1, dim=4, dim_mults=(1, 1, 1), n_blocks=1)
    with pytest.raises(
        ValueError, match="12x10 is not divisible by the total downsampling factor 4"
    ):
        net(torch.randn(1, 1, 12, 10))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net(torch.randn(1, 2, 12, 12))
    with pytest.raises(ValueError, match="without conditioning"):
        net(torch.randn(1, 1, 12, 12), torch.randn(1, 3))
    cond_net = UNet(1, 1, dim=4, dim_mults=(1, 1), n_blocks=1, cond_dim=3)
    with pytest.raises(ValueError, match=r"cond of shape \(B, 3\)"):
        cond_net(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"valid level indices are 0\.\.1"):
        UNet(1, 1, dim=4, dim_mults=(1, 2), attn_levels=(2,))
    with pytest.raises(ValueError, match="n_levels"):
        BlindPairUNet(**{**unet_config("tiny"), "n_levels": 1})


def test_config_errors_name_valid_choices():
    with pytest.raises(
        ValueError, match="paper-kolmogorov, paper-qg, cpu-kolmogorov, cpu-qg, tiny"
    ):
        unet_config("paper-kolmo")
    with pytest.raises(ValueError, match="blind, explicit"):
        unet_config("tiny", "oracle")
    with pytest.raises(ValueError, match="valid choices"):
        surrogate_unet_config("big")
    # configs are fresh copies
    cfg = unet_config("tiny")
    cfg["dim"] = 999
    assert unet_config("tiny")["dim"] == 8


def test_the_old_level_keywords_still_work_with_a_warning():
    """s2=/s1= (table levels under their pre-issue-15 names) and logits_s2/logits_s1 are deprecated
    aliases of i2=/i1= and logits_i2/logits_i1: same numbers, a DeprecationWarning."""
    from sns.nets.mlp import MLPPairDenoiser

    torch.manual_seed(0)
    net = MLPPairDenoiser(dim=3, n_levels=5, width=16, blind=False).eval()
    x, lv = torch.randn(4, 3), torch.tensor([0, 1, 2, 4])
    new = net(x, x, i2=lv, i1=lv.flip(0))
    with pytest.warns(DeprecationWarning, match=r"s2=.*i2="):
        old = net(x, x, s2=lv, s1=lv.flip(0))
    torch.testing.assert_close(old.eps_next, new.eps_next)
    with pytest.warns(DeprecationWarning, match="logits_i1"):
        torch.testing.assert_close(new.logits_s1, new.logits_i1)
    with pytest.raises(TypeError, match="both i2= and its deprecated name s2="), pytest.warns(DeprecationWarning):
        net(x, x, i2=lv, s2=lv, i1=lv)
    with pytest.raises(TypeError, match="unexpected keyword"):
        net(x, x, levels=lv)
