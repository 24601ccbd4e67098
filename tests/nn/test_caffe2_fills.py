"""Caffe2's XavierFill / MSRAFill / GaussianFill as Detectron uses them."""
import math

import pytest
import torch

from pydetectron.nn import init


def test_xavier_fill_is_uniform_with_caffe2_fan_in():
    torch.manual_seed(0)
    w = torch.empty(64, 32, 3, 3)  # Caffe2 fan_in = numel / shape[0] = 32 * 9
    init.XavierFill(w)
    scale = math.sqrt(3.0 / (32 * 9))
    assert w.abs().max() <= scale
    assert w.abs().max() > 0.99 * scale  # fills the whole interval
    # Uniform on [-s, s] has variance s^2 / 3
    assert w.var().item() == pytest.approx(scale ** 2 / 3, rel=0.05)


def test_msra_fill_uses_fan_out():
    torch.manual_seed(0)
    w = torch.empty(16, 64, 3, 3)  # Caffe2 fan_out = numel / shape[1] = 16 * 9 (not 64 * 9)
    init.MSRAFill(w)
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / (16 * 9)), rel=0.05)
    assert w.mean().abs().item() < 0.02


def test_gaussian_and_constant_fill():
    torch.manual_seed(0)
    w = torch.empty(200, 300)
    init.GaussianFill(w, std=0.01)
    assert w.std().item() == pytest.approx(0.01, rel=0.02)
    init.ConstantFill(w, 0.5)
    assert torch.all(w == 0.5)


def test_fill_by_name_and_unknown_name():
    torch.manual_seed(0)
    w = torch.empty(100, 100)
    init.fill_by_name(w, "GaussianFill", std=0.001)
    assert w.std().item() == pytest.approx(0.001, rel=0.05)
    with pytest.raises(ValueError, match="XavierFill"):
        init.fill_by_name(w, "HeFill")


def test_init_layer_zeroes_the_bias():
    conv = torch.nn.Conv2d(4, 8, 3)
    init.init_layer(conv, "MSRAFill")
    assert torch.all(conv.bias == 0)
