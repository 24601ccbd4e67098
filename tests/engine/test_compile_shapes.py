"""engine.compile_shapes: --compile traces the blob's size symbolically (one graph for many
sizes), --shape_buckets / the CUDA-graph modes set SHAPE_BUCKETS, bucket padding leaves the
features of the image alone, and the tools refuse bad values in one line."""
import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pydetectron.engine import compile_shapes
from pydetectron.modeling.FPN import FPN
from pydetectron.modeling.ResNet import ResNet_convX_body, ResNetSpec
from pydetectron.utils.errors import CliError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny_fpn():
    torch.manual_seed(0)
    body = ResNet_convX_body((1, 1, 1, 1), ResNetSpec(width_per_group=8, stem_out_dim=16,
                                                      res2_out_dim=32))
    fpn = FPN(body, fpn_dim=16, min_level=2, max_level=6).eval()
    with torch.no_grad():
        for name, p in fpn.named_parameters():
            if name.endswith('bias'):
                p.copy_(0.1 * torch.randn_like(p))    # frozen-BN offsets, FPN conv biases
            elif name.endswith('weight') and p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))       # frozen-BN scales
    return fpn


def _args(**kw):
    return argparse.Namespace(**kw)


# ---------------------------------------------------------------------------------------------- #
# torch.compile options and the number of compilations
# ---------------------------------------------------------------------------------------------- #

def test_compile_options_by_mode():
    # dynamic sizes: the mode as Inductor options, layout optimisation off (module docstring)
    assert compile_shapes.compile_options('default') == \
        {'dynamic': True, 'options': {'layout_optimization': False}}
    assert compile_shapes.compile_options('max-autotune-no-cudagraphs') == \
        {'dynamic': True, 'options': {'max_autotune': True, 'coordinate_descent_tuning': True,
                                      'layout_optimization': False}}
    # CUDA graphs: static shapes (the bucket padding makes them repeat)
    assert compile_shapes.compile_options('reduce-overhead') == {'mode': 'reduce-overhead'}
    assert compile_shapes.compile_options('max-autotune') == {'mode': 'max-autotune'}


@pytest.mark.slow
@pytest.mark.parametrize('dynamic, graphs', [(True, 1), (None, 2)])
def test_default_compile_traces_every_size_in_one_graph(dynamic, graphs):
    """Five blob sizes (multiples of 32, both orientations, as COCO's): the tools' options
    (dynamic=True) compile the FPN body once, the FPN's 2x size check and the top-down
    upsampling staying symbolic; torch's automatic dynamic shapes (the tools' options before)
    compile twice: static for the first size, then dynamic. (The sizes are large enough that
    the CPU's choice of convolution backend, which guards on small tensor sizes, is the same
    for all: on CPU small inputs add recompilations that a GPU does not have.)"""
    from torch._dynamo.utils import counters
    fpn = _tiny_fpn()
    sizes = [(256, 320), (320, 256), (384, 448), (288, 512), (224, 352)]
    inputs = [torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
              for h, w in sizes]
    with torch.no_grad():
        expected = [fpn(x) for x in inputs]
    torch._dynamo.reset()
    counters.clear()
    options = compile_shapes.compile_options('default')
    options.pop('options')                    # Inductor's
    if dynamic is None:
        options.pop('dynamic')
    compiled = torch.compile(fpn, backend='eager', **options)
    try:
        with torch.no_grad():
            got = [compiled(x) for x in inputs]
        assert counters['stats']['unique_graphs'] == graphs
    finally:
        torch._dynamo.reset()
    for e, g in zip(expected, got):    # the traced graph computes what eager does
        for a, b in zip(e, g):
            assert torch.equal(a, b)


class _TrainedConvs(torch.nn.Module):
    """Two convolutions as the body has them: a frozen-BN conv (``conv_norm_relu``) whose output
    the second conv's backward needs the gradient of."""

    def __init__(self):
        super().__init__()
        from pydetectron.nn.affine import AffineChannel2d, freeze_affine_channels
        self.conv1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.norm1 = AffineChannel2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        freeze_affine_channels(self)

    def forward(self, x):
        from pydetectron.nn.affine import conv_norm_relu
        return self.conv2(conv_norm_relu(x, self.conv1, self.norm1))


@pytest.mark.slow
def test_inductor_trains_every_width_in_one_graph():
    """Inductor on the CPU, training steps over three blob sizes: one graph. Without the
    options' layout_optimization=False, the saved channels-last activation reaches the backward
    with numeric strides (a guard on the width: the C5 check of dev/count_recompiles.py);
    without keep_convolution_backward_dynamic, the conv backward lowering guards conv2's
    grad_input strides; either compiled once per width. Values and gradients as eager's."""
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    model = _TrainedConvs()
    sizes = [(128, 160), (160, 128), (128, 224)]
    inputs = [torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
              for h, w in sizes]

    def step(module, x):
        module.zero_grad(set_to_none=True)
        y = module(x)
        (y * y).sum().backward()
        return [y.detach()] + [p.grad for p in module.parameters() if p.requires_grad]

    expected = [step(model, x) for x in inputs]
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend='inductor', **compile_shapes.compile_options('default'))
    try:
        # no cache: a graph cached by another compile would bring that compile's guards
        with torch._inductor.config.patch(force_disable_caches=True):
            got = [step(compiled, x) for x in inputs]
        assert counters['stats']['unique_graphs'] == 1
    finally:
        torch._dynamo.reset()
    for e, g in zip(expected, got):
        for a, b in zip(e, g):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- #
# Bucket padding and the features inside the image
# ---------------------------------------------------------------------------------------------- #

def test_bucket_padding_keeps_the_features_away_from_the_padding():
    """The bucket blob is the stride blob with more zeros at the bottom/right. The backbone's
    features are the same, bit for bit, inside the image except on the last row and column of
    every stage (hand-derived: the stem's 7x7 conv and 3x3 max pool read only zeros or image
    rows there, in both blobs; but each stage's 3x3 conv at its last row reads one row beyond
    the stride blob: zero padding there, a feature computed from the last image rows in the
    bucket blob). So RPN anchors and proposals near the border can change: the reason bucket
    padding is off by default."""
    from pydetectron.utils import blob as blob_utils
    fpn = _tiny_fpn()
    h, w = 192, 256
    rng = np.random.RandomState(1)
    ims = [rng.randn(h, w, 3).astype(np.float32), rng.randn(h - 40, w - 10, 3).astype(np.float32)]
    x = torch.from_numpy(blob_utils.im_list_to_blob(ims, stride=32))
    bucket = torch.from_numpy(blob_utils.im_list_to_blob(
        ims, stride=32, buckets=blob_utils.shape_buckets(160, (100,), 100, 32)))   # edge 128
    assert x.shape[2:] == (h, w) and bucket.shape[2:] == (320, 320)
    with torch.no_grad():
        plain = fpn.conv_body.forward_stages(x)
        padded = fpn.conv_body.forward_stages(bucket)
    for stride, p, q in zip((4, 8, 16, 32), plain, padded):
        rows, cols = h // stride - 1, w // stride - 1
        assert p.shape[-2:] == (h // stride, w // stride)
        assert torch.equal(q[..., :rows, :cols], p[..., :rows, :cols]), stride
        border = (q[..., :h // stride, :w // stride] - p).abs()
        assert border[..., rows, :].max() > 1e-3 and border[..., :, cols].max() > 1e-3


# ---------------------------------------------------------------------------------------------- #
# SHAPE_BUCKETS from the flags
# ---------------------------------------------------------------------------------------------- #

def test_set_shape_buckets_from_the_flags(fresh_cfg):
    fresh_cfg.FPN.FPN_ON = True
    assert compile_shapes.set_shape_buckets(fresh_cfg, _args(compile=None)) == 0
    assert compile_shapes.set_shape_buckets(fresh_cfg, _args(compile='default')) == 0
    assert compile_shapes.set_shape_buckets(
        fresh_cfg, _args(compile='reduce-overhead')) == compile_shapes.DEFAULT_SHAPE_BUCKETS
    # a value of the config (or --set) is kept; the flag is the last word, 0 turning it off
    fresh_cfg.SHAPE_BUCKETS = 256
    assert compile_shapes.set_shape_buckets(fresh_cfg, _args(compile='max-autotune')) == 256
    assert compile_shapes.set_shape_buckets(
        fresh_cfg, _args(compile='reduce-overhead', shape_buckets=0)) == 0
    assert compile_shapes.set_shape_buckets(fresh_cfg, _args(shape_buckets=64)) == 64
    with pytest.raises(CliError, match=r'^--shape_buckets 100: expected 0 \(off\) or a multiple '
                       r'of FPN.COARSEST_STRIDE \(32\)$'):
        compile_shapes.set_shape_buckets(fresh_cfg, _args(shape_buckets=100))
    with pytest.raises(CliError, match='^--compile fast: expected one of default, '
                       'reduce-overhead, max-autotune, max-autotune-no-cudagraphs$'):
        compile_shapes.set_shape_buckets(fresh_cfg, _args(compile='fast'))
    fresh_cfg.FPN.FPN_ON = False              # no FPN: any size is a blob size
    assert compile_shapes.set_shape_buckets(fresh_cfg, _args(shape_buckets=100)) == 100


def test_config_check_names_the_key(fresh_cfg):
    from pydetectron.core.config_checks import find_value_problems
    fresh_cfg.FPN.FPN_ON = True
    fresh_cfg.SHAPE_BUCKETS = 96
    assert find_value_problems(fresh_cfg) == []
    fresh_cfg.SHAPE_BUCKETS = 100
    assert find_value_problems(fresh_cfg) == [
        'SHAPE_BUCKETS is 100; expected 0 (off) or a multiple of FPN.COARSEST_STRIDE (32) > 0']


@pytest.mark.parametrize('tool, extra, message', [
    ('test_net.py', ['--shape_buckets', '100'],
     '--shape_buckets 100: expected 0 (off) or a multiple of FPN.COARSEST_STRIDE (32)'),
    ('train_net_step.py', ['--shape_buckets', '100'],
     '--shape_buckets 100: expected 0 (off) or a multiple of FPN.COARSEST_STRIDE (32)'),
    ('train_net_step.py', ['--shape_buckets', '-32'], "expected an integer >= 0, got '-32'"),
    ('infer_simple.py', ['--compile', 'fast'], '--compile fast: expected one of default'),
])
def test_tools_refuse_a_bad_value_in_one_line(tool, extra, message, tmp_path):
    cfg_file = os.path.join(ROOT, 'configs', 'baselines', 'e2e_mask_rcnn_R-50-FPN_1x.yaml')
    weights = tmp_path / 'model.pkl'
    weights.write_bytes(b'not read: the flags are checked first')
    args = {'test_net.py': ['--dataset', 'coco2017_val', '--load_detectron', str(weights),
                            '--output_dir', str(tmp_path / 'out')],
            'train_net_step.py': ['--dataset', 'coco2017', '--no_save'],
            'infer_simple.py': ['--load_detectron', str(weights), '--image_dir', str(tmp_path),
                                '--output_dir', str(tmp_path / 'out')]}[tool]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', tool), '--cfg', cfg_file]
                          + args + extra, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]


def test_convolution_backward_patch_steps_aside_where_inductors_internals_differ(monkeypatch):
    """Where Inductor's private helpers do not take the patch's arguments (another torch), the
    original lowering stays in place and the tools still compile."""
    from torch._inductor import lowering
    from pydetectron.engine import compile_shapes
    op = torch.ops.aten.convolution_backward.default

    def original(*args, **kwargs):       # an unpatched lowering of this torch
        raise AssertionError('not called here')

    def no_lowering_dict(*args, **kwargs):
        raise TypeError("_register_lowering() got an unexpected keyword argument 'lowering_dict'")

    monkeypatch.setitem(lowering.lowerings, op, original)
    monkeypatch.setattr(lowering, '_register_lowering', no_lowering_dict)
    assert compile_shapes.keep_convolution_backward_dynamic() is False
    assert lowering.lowerings[op] is original
    assert compile_shapes.compile_options('default')['dynamic'] is True
