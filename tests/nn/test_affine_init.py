"""nn.affine.init_affine_channels_from_data: a frozen-BN network from random weights starts with
each AffineChannel normalising its input channels over the batch, layer after layer."""
import numpy as np
import torch
from torch import nn

from pydetectron.nn.affine import AffineChannel2d, init_affine_channels_from_data


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), AffineChannel2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), AffineChannel2d(16), nn.ReLU(),
        nn.Conv2d(16, 4, 1), AffineChannel2d(4))


def test_each_affine_normalises_its_input_over_the_batch():
    net = _net()
    x = torch.randn(3, 3, 20, 24) * 40 + 7          # far from zero mean, unit variance
    assert init_affine_channels_from_data(net, x) == 3
    outputs = []
    hooks = [m.register_forward_hook(lambda m, a, o: outputs.append((a[0], o)))
             for m in net if isinstance(m, AffineChannel2d)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for inp, out in outputs:
        # the statistics of the layer's input, in float64 with numpy (not the code under test)
        a = inp.double().numpy().transpose(1, 0, 2, 3).reshape(inp.shape[1], -1)
        mean, var = a.mean(axis=1), a.var(axis=1)
        np.testing.assert_allclose(out.double().numpy().transpose(1, 0, 2, 3).reshape(
            out.shape[1], -1).mean(axis=1), 0, atol=2e-5)
        o = out.double().numpy().transpose(1, 0, 2, 3).reshape(out.shape[1], -1)
        np.testing.assert_allclose(o.var(axis=1), var / (var + 1e-5), rtol=1e-4)
        assert (mean != 0).any()                       # the input itself was not normalised


def test_later_layers_see_the_normalised_activations():
    """The second affine's statistics are those of its input *after* the first was set: the
    same as setting the layers one forward pass at a time."""
    net, ref = _net(), _net()
    x = torch.randn(2, 3, 16, 16) * 10
    init_affine_channels_from_data(net, x)
    affines = [m for m in ref if isinstance(m, AffineChannel2d)]
    with torch.no_grad():
        for k, layer in enumerate(affines):
            idx = list(ref).index(layer)
            h = x
            for m in list(ref)[:idx]:
                h = m(h)
            h = h.double()
            mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
            layer.weight.copy_(1 / torch.sqrt(var + 1e-5))
            layer.bias.copy_(-mean / torch.sqrt(var + 1e-5))
    for a, b in zip([m for m in net if isinstance(m, AffineChannel2d)], affines):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.bias, b.bias, rtol=1e-5, atol=1e-5)
    for m in net:
        assert not m._forward_pre_hooks                # the hooks are gone
