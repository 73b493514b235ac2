"""Tests for onestep.core.nn: shapes, cond, rebuild from config, LoRA, EDM preconditioning."""

import json
import math

import pytest
import torch
from torch import nn

from onestep.core.nn import (
    MLP,
    DiT,
    EDMPrecond,
    LoRAConv2d,
    LoRALinear,
    SinusoidalEmbedding,
    UNet,
    apply_lora,
    build_network,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    network_name,
)

B = 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops run fastest on one thread, and the CI machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(kind: str, **cond):
    """A tiny network and an input for it; `cond` is num_classes=... or cond_dim=..."""
    if kind == "mlp_vector":
        return MLP(2, hidden=32, depth=2, time_dim=16, **cond), torch.randn(B, 2)
    if kind == "mlp_chunk":  # an action chunk (B, horizon, action_dim) flattened inside
        return MLP(12, hidden=32, depth=2, time_dim=16, **cond), torch.randn(B, 4, 3)
    if kind == "unet_image":
        return UNet(3, base=16, attn_resolutions=(2,), **cond), torch.randn(B, 3, 8, 8)
    if kind == "unet_spec":  # (B, 1, n_mels, frames), 3 levels
        return UNet(1, base=16, mults=(1, 2, 2), **cond), torch.randn(B, 1, 16, 24)
    if kind == "dit_image":
        return DiT((8, 8), 2, 3, hidden=32, depth=2, heads=2, **cond), torch.randn(B, 3, 8, 8)
    if kind == "dit_spec":
        return DiT((16, 24), 4, 1, hidden=32, depth=2, heads=2, **cond), torch.randn(B, 1, 16, 24)
    if kind == "dit_video":
        net = DiT((4, 8, 8), (2, 4, 4), 3, hidden=32, depth=2, heads=2, **cond)
        return net, torch.randn(B, 3, 4, 8, 8)
    raise KeyError(kind)


KINDS = ["mlp_vector", "mlp_chunk", "unet_image", "unet_spec", "dit_image", "dit_spec", "dit_video"]
CONDS = {
    "none": ({}, None),
    "class": ({"num_classes": 5}, torch.tensor([0, 4])),
    "vector": ({"cond_dim": 3}, torch.randn(B, 3)),
}


def randomize(net: nn.Module) -> nn.Module:
    """Perturb every parameter so zero-initialised output layers do not hide bugs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cond_kind", list(CONDS))
def test_output_shape_with_and_without_cond(kind, cond_kind):
    kwargs, cond = CONDS[cond_kind]
    net, x = make(kind, **kwargs)
    net = randomize(net)
    t = torch.rand(B)
    out = net(x, t, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    uncond = net(x, t)  # a conditional net called without cond uses the null embedding
    assert uncond.shape == x.shape
    if cond is not None:
        assert not torch.allclose(out, uncond)
    assert torch.allclose(net(x, 0.3, cond), net(x, torch.full((B,), 0.3), cond), atol=1e-6)


def test_null_cond_is_null_class_or_zero_vector():
    net, x = make("mlp_vector", num_classes=5)
    net = randomize(net)
    t = torch.rand(B)
    assert torch.allclose(net(x, t), net(x, t, torch.full((B,), 5)))
    net, x = make("unet_image", cond_dim=3)
    net = randomize(net)
    assert torch.allclose(net(x, t), net(x, t, torch.zeros(B, 3)), atol=1e-6)


def test_out_channels():
    x = torch.randn(B, 3, 8, 8)
    assert UNet(3, out_channels=6, base=16)(x, 0.5).shape == (B, 6, 8, 8)
    assert DiT((8, 8), 2, 3, hidden=32, depth=1, heads=2, out_channels=1)(x, 0.5).shape == (
        B,
        1,
        8,
        8,
    )
    assert MLP(2, hidden=32, out_dim=1)(torch.randn(B, 2), 0.5).shape == (B, 1)


@pytest.mark.parametrize("size", [(28, 28), (15, 9)])
def test_unet_pads_sizes_not_divisible(size):
    net = randomize(UNet(1, base=16, mults=(1, 2, 2)))
    x = torch.randn(1, 1, *size)
    assert net(x, 0.5).shape == x.shape


def test_dit_sequence_cond_is_mean_pooled():
    net, x = make("dit_image", cond_dim=3)
    net = randomize(net)
    seq = torch.randn(B, 7, 3)
    assert torch.allclose(net(x, 0.5, seq), net(x, 0.5, seq.mean(1)), atol=1e-6)


def test_wrong_cond_raises():
    cls_net, x = make("mlp_vector", num_classes=5)
    with pytest.raises(ValueError, match="expected"):
        cls_net(x, 0.5, torch.randn(B, 3))  # float cond for a class-conditional net
    with pytest.raises(ValueError, match=r"got torch.int64 of shape \(3,\)"):
        cls_net(x, 0.5, torch.tensor([0, 1, 2]))  # wrong batch
    vec_net, x = make("unet_image", cond_dim=3)
    with pytest.raises(ValueError, match=r"\(B, 3\).*got torch.float32 of shape \(2, 4\)"):
        vec_net(x, 0.5, torch.randn(B, 4))
    with pytest.raises(ValueError):
        vec_net(x, 0.5, torch.randn(B, 5, 3))  # sequences only for the DiT
    plain, x = make("dit_image")
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, 0.5, torch.tensor([0, 1]))


def test_wrong_input_and_config_raise():
    with pytest.raises(ValueError, match="divisible"):
        DiT((16, 24), 5, 1)
    with pytest.raises(ValueError, match=r"\(B, 3, \*\(8, 8\)\)"):
        DiT((8, 8), 2, 3, hidden=32, heads=2)(torch.randn(B, 3, 8, 10), 0.5)
    with pytest.raises(ValueError, match="downsampling factors"):
        UNet(3, attn_resolutions=(16,))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        UNet(3, base=16)(torch.randn(B, 1, 8, 8), 0.5)
    with pytest.raises(ValueError, match="dim=2"):
        MLP(2)(torch.randn(B, 3), 0.5)


def test_sinusoidal_embedding_closed_form():
    t = torch.tensor([-3.0, 0.0, 0.25, 80.0], dtype=torch.float64)
    emb = SinusoidalEmbedding(8, scale=250.0)(t)
    assert emb.shape == (4, 8)
    for k in range(4):  # float32 phases: error ~ |arg| * 1e-7
        arg = 250.0 * t * 10000 ** (-k / 4)
        assert torch.allclose(emb[:, k].double(), torch.cos(arg), atol=2e-3)
        assert torch.allclose(emb[:, 4 + k].double(), torch.sin(arg), atol=2e-3)
    assert SinusoidalEmbedding(7)(t).shape == (4, 7)


def test_dit_patches_are_local():
    """With no blocks, each output patch depends only on the matching input patch."""
    for shape, patch in [((8, 12), (2, 4)), ((4, 8, 8), (2, 4, 4))]:
        net = randomize(DiT(shape, patch, 2, hidden=16, depth=0, heads=2))
        x = torch.randn(1, 2, *shape)
        x2 = x.clone()
        region = tuple(slice(p, 2 * p) for p in patch)  # the second patch on every axis
        x2[(slice(None), slice(None), *region)] += 1.0
        diff = (net(x2, 0.5) - net(x, 0.5)).abs().sum(1)[0]
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[region] = True
        assert diff[mask].min() > 0 and diff[~mask].max() == 0


@pytest.mark.parametrize("kind", ["mlp_chunk", "unet_spec", "dit_video"])
def test_build_network_roundtrip(kind):
    net, x = make(kind, num_classes=5)
    net = randomize(net)
    config = json.loads(json.dumps(net.config))  # plain JSON
    rebuilt = build_network(network_name(net), config)
    assert type(rebuilt) is type(net)
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(net.state_dict())
    t, cond = torch.rand(B), torch.tensor([1, 3])
    assert torch.equal(rebuilt(x, t, cond), net(x, t, cond))


def test_build_network_precond_and_unknown_name():
    net = EDMPrecond(randomize(MLP(2, hidden=32, time_scale=250.0)), sigma_data=0.7)
    config = json.loads(json.dumps(net.config))
    assert config["net"]["name"] == "mlp" and config["sigma_data"] == 0.7
    rebuilt = build_network(network_name(net), config)
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(B, 2)
    assert torch.equal(rebuilt(x, 1.3), net(x, 1.3))
    with pytest.raises(ValueError, match="known:.*'dit'.*'mlp'.*'unet'"):
        build_network("resnet", {})
    with pytest.raises(ValueError, match="known"):
        network_name(nn.Linear(2, 2))


# LoRA


@pytest.mark.parametrize("layer", [nn.Linear(6, 5), nn.Conv2d(3, 4, 3, stride=2, padding=1)])
def test_lora_layer_init_step_merge(layer):
    torch.manual_seed(0)
    x = torch.randn(4, 6) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 7, 7)
    expected = layer(x).detach()
    base_weight = layer.weight.detach().clone()
    wrapper = (LoRALinear if isinstance(layer, nn.Linear) else LoRAConv2d)(layer, rank=2, alpha=4)
    assert torch.equal(wrapper(x), expected)  # B = 0: identical at init
    assert not layer.weight.requires_grad and not layer.bias.requires_grad

    model = nn.Sequential(wrapper)
    opt = torch.optim.SGD(lora_parameters(model), lr=0.1)
    before = lora_state_dict(model)
    model(x).square().mean().backward()
    opt.step()
    after = lora_state_dict(model)
    assert set(after) == {"0.lora_A", "0.lora_B"}
    assert not torch.equal(after["0.lora_B"], before["0.lora_B"])
    assert torch.equal(layer.weight, base_weight)  # base frozen
    out = model(x).detach()
    assert not torch.allclose(out, expected)

    assert merge_lora(model) == ["0"]
    assert type(model[0]) is type(layer) and model[0].weight.requires_grad
    assert torch.allclose(model(x), out, atol=1e-5)


def test_apply_lora_on_networks():
    dit, x = make("dit_image", num_classes=5)
    dit = randomize(dit)
    names = apply_lora(dit, rank=4, include=lambda name: name.startswith("blocks."))
    assert "blocks.0.attn.qkv" in names and all(n.startswith("blocks.") for n in names)
    assert apply_lora(dit, rank=4, include=lambda name: name.startswith("blocks.")) == []
    assert sum(isinstance(m, LoRALinear) for m in dit.modules()) == len(names)
    assert len(lora_parameters(dit)) == 2 * len(names)

    unet, y = make("unet_image")
    unet = randomize(unet)
    ref = unet(y, 0.5).detach()
    names = apply_lora(unet, rank=2, target=(nn.Conv2d,))
    assert names and all(isinstance(unet.get_submodule(n), LoRAConv2d) for n in names)
    assert torch.equal(unet(y, 0.5), ref)
    with torch.no_grad():
        for p in lora_parameters(unet):
            p.add_(0.05 * torch.randn_like(p))
    out = unet(y, 0.5).detach()
    assert merge_lora(unet) == names
    assert not any(isinstance(m, (LoRAConv2d, LoRALinear)) for m in unet.modules())
    assert torch.allclose(unet(y, 0.5), out, atol=1e-5)
    with pytest.raises(ValueError, match="supported"):
        apply_lora(unet, rank=2, target=(nn.Conv1d,))


# EDM preconditioning


class Recorder(nn.Module):
    """F(x, t, cond) = 2 x + t (broadcast); remembers what it was called with."""

    def forward(self, x, t, cond=None):
        self.seen = (x, t, cond)
        return 2 * x + t.view(-1, *([1] * (x.ndim - 1)))


def test_edm_precond_matches_formula():
    sd = 0.5
    precond = EDMPrecond(Recorder(), sigma_data=sd)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    sigma = torch.tensor([0.002, 1.0, 80.0], dtype=torch.float64)
    out = precond(x, sigma, cond="c")
    fx, t, cond = precond.net.seen
    for i, s in enumerate(sigma.tolist()):
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / math.sqrt(s**2 + sd**2)
        c_in = 1 / math.sqrt(s**2 + sd**2)
        c_noise = math.log(s) / 4
        assert torch.allclose(fx[i], c_in * x[i]) and abs(t[i].item() - c_noise) < 1e-12
        ref = c_skip * x[i] + c_out * (2 * c_in * x[i] + c_noise)
        assert torch.allclose(out[i], ref)
    assert cond == "c"


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 8, 8)])
def test_edm_precond_sigma_to_zero_and_broadcast(shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    if len(shape) == 2:
        inner = randomize(MLP(3, hidden=32, time_scale=250.0))
    else:
        inner = randomize(DiT(shape[2:], (2, 4, 4), 3, hidden=32, depth=1, heads=2, time_scale=250))
    precond = EDMPrecond(inner)
    assert torch.allclose(precond(x, 1e-6), x, atol=1e-5)
    assert torch.equal(precond(x, 0.0), x)  # c_out = 0 and c_noise stays finite
    assert torch.allclose(precond(x, 2.0), precond(x, torch.full((shape[0],), 2.0)))
    assert not torch.allclose(precond(x, 2.0), x)


# training


def test_mlp_fits_2d_regression():
    torch.manual_seed(0)
    net = MLP(2, hidden=64, depth=2, time_dim=16)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def batch():
        x, t = torch.randn(128, 2), torch.rand(128)
        target = torch.stack([torch.sin(2 * x[:, 1]), x[:, 0] * (1 - t)], dim=1)
        return x, t, target

    losses = []
    for _ in range(200):
        x, t, target = batch()
        loss = (net(x, t) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first / 5, (first, last)


@pytest.mark.parametrize("kind", ["unet_image", "dit_video"])
def test_training_step_grads(kind):
    torch.manual_seed(0)
    net, x = make(kind, num_classes=5)
    labels = torch.tensor([1, 5])  # one real label and one dropped (null) label
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for step in range(3):
        opt.zero_grad()
        loss = (net(x, torch.rand(B), labels) - x).square().mean()
        loss.backward()
        for name, p in net.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
        if step == 0 and kind.startswith("dit"):  # adaLN-Zero: only the output layer learns first
            assert net.final.linear.weight.grad.abs().sum() > 0
            assert net.blocks[0].attn.qkv.weight.grad.abs().sum() == 0
        opt.step()
    # after a few steps the zero-initialised gates open and every parameter receives signal
    dead = [n for n, p in net.named_parameters() if p.grad.abs().sum() == 0]
    assert dead == [], dead
