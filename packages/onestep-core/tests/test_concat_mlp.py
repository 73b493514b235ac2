"""ConcatMLP (the Diffusion-QL / OFQL policy network): shapes, conditioning, rebuild from its
config, MeanFlow's TwoTimeNet around it, and a flow policy sampled with core's Euler solver."""

import pytest
import torch

from onestep.core.denoiser import Denoiser
from onestep.core.distill.meanflow import MeanFlowGenerator, MeanFlowModel, TwoTimeNet
from onestep.core.nn import ConcatMLP, build_network, network_name
from onestep.core.paths import RectifiedFlow
from onestep.core.solvers import sample_euler


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_shapes_cond_and_rebuild():
    torch.manual_seed(0)
    net = ConcatMLP(3, cond_dim=5, hidden=16, depth=2)
    x, s = torch.randn(4, 3), torch.randn(4, 5)
    out = net(x, torch.rand(4), s)
    assert out.shape == (4, 3)
    assert not torch.allclose(out, net(x, torch.rand(4), torch.randn(4, 5)))  # cond is read
    again = build_network(network_name(net), net.config)
    again.load_state_dict(net.state_dict())
    torch.testing.assert_close(again(x, 0.3, s), net(x, 0.3, s))
    with pytest.raises(ValueError, match="cond of shape"):
        net(x, 0.3)
    with pytest.raises(ValueError, match="unconditional"):
        ConcatMLP(3)(x, 0.3, s)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        net(torch.randn(4, 2), 0.3, s)


def test_two_time_net_starts_as_the_one_time_net():
    """TwoTimeNet's gap embedding starts at zero: u(z, r, t) = net(z, t) for every r, and the
    gap embedding is what lets the output depend on r once trained."""
    torch.manual_seed(0)
    base = ConcatMLP(2, cond_dim=3, hidden=16)
    ref = {k: v.clone() for k, v in base.state_dict().items()}
    two = TwoTimeNet(base, time_scale=1.0)
    model = MeanFlowModel(two, Denoiser(torch.nn.Identity(), RectifiedFlow(),
                                        prediction="velocity"))
    z, s = torch.randn(5, 2), torch.randn(5, 3)
    t = torch.full((5,), 0.9)
    fresh = ConcatMLP(2, cond_dim=3, hidden=16)
    fresh.load_state_dict(ref)
    for r in (0.0, 0.5):
        torch.testing.assert_close(model(z, torch.full((5,), r), t, s), fresh(z, t, s))
    torch.nn.init.normal_(two.net.time_embed.gap.mlp[-1].weight)
    assert not torch.allclose(model(z, torch.zeros(5), t, s), model(z, torch.full((5,), .5), t, s))
    # one MeanFlow step is z_1 - u(z_1, 0, 1)
    one = MeanFlowGenerator(model).generate(z, s, nfe=1)
    torch.testing.assert_close(one, z - model(z, torch.zeros(5), torch.ones(5), s))


def test_flow_policy_euler_matches_a_closed_form():
    """A velocity net that returns noise - a* for a fixed a* (the exact velocity when the data is
    the point a*: v = (z - a*) / t) maps noise onto a* with core's Euler solver."""
    target = torch.tensor([0.3, -0.7])

    class Exact(torch.nn.Module):
        def forward(self, z, t, cond=None):
            return (z - target) / t.reshape(-1, 1)

    den = Denoiser(Exact(), RectifiedFlow(), prediction="velocity", time_input="t")
    z = torch.randn(6, 2, dtype=torch.float64)
    out = sample_euler(den, z, torch.linspace(1.0, 0.0, 4, dtype=torch.float64))
    torch.testing.assert_close(out, target.to(out).expand(6, 2))


def test_forward_embedded_is_forward():
    torch.manual_seed(0)
    net = ConcatMLP(2, cond_dim=3, hidden=16)
    x, s, t = torch.randn(4, 2), torch.randn(4, 3), torch.rand(4)
    torch.testing.assert_close(net.forward_embedded(x, net.time_embed(t, 4), s), net(x, t, s))
