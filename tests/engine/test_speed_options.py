"""engine.speed_options: the tools' --channels_last and --compile [MODE], parsed and applied."""
import os
import runpy

import numpy as np
import pytest
import torch

from pydetectron.core import test as test_mod
from pydetectron.engine.cli import ArgumentParser
from pydetectron.engine.speed_options import add_speed_arguments, apply_speed_options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_flags_parse_as_the_tools_document():
    parser = ArgumentParser(prog='tool.py')
    add_speed_arguments(parser)
    plain = parser.parse_args([])
    assert (plain.channels_last, plain.compile) == (False, None)
    bare = parser.parse_args(['--channels_last', '--compile'])
    assert (bare.channels_last, bare.compile) == (True, 'default')
    assert parser.parse_args(['--compile', 'reduce-overhead']).compile == 'reduce-overhead'


class _Body(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.compiled_with = []

    def compile(self, **kwargs):
        self.compiled_with.append(kwargs)


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv_Body = _Body()
        self.head = torch.nn.Conv2d(4, 2, 3)


_DYNAMIC = {'layout_optimization': False}     # engine.compile_shapes: dynamic sizes stay symbolic


@pytest.mark.parametrize('mode,kwargs', [
    (None, None), ('default', {'dynamic': True, 'options': _DYNAMIC}),
    ('reduce-overhead', {'mode': 'reduce-overhead'}),
    ('max-autotune-no-cudagraphs',
     {'dynamic': True, 'options': dict(max_autotune=True, coordinate_descent_tuning=True,
                                       **_DYNAMIC)})])
def test_compile_reaches_only_the_conv_body_in_place(mode, kwargs):
    model = _Model()
    names = [n for n, _ in model.named_parameters()]
    assert apply_speed_options(model, compile_mode=mode) is model
    assert model.Conv_Body.compiled_with == ([] if kwargs is None else [kwargs])
    assert [n for n, _ in model.named_parameters()] == names   # checkpoints keep their keys
    assert not model.head.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_changes_every_conv_layout():
    model = apply_speed_options(_Model(), channels_last=True)
    for conv in (model.Conv_Body.conv, model.head):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.Conv_Body.compiled_with == []


@pytest.mark.usefixtures('fresh_cfg')
def test_channels_last_gives_the_same_detections(coco_mini):
    # The tools' --channels_last only changes the memory layout of the convolutions.
    # the small-scale model builder and images of the real-model tests
    real = runpy.run_path(os.path.join(ROOT, 'tests', 'core', 'test_test_real_model.py'))
    model = real['_build']('e2e_mask_rcnn_R-50-FPN_1x.yaml',
                           ['MODEL.NUM_CLASSES', 3, 'TEST.DETECTIONS_PER_IM', 20])
    im = real['_same_size_images'](coco_mini, 1)[0]
    ref_boxes, ref_segms, _ = test_mod.im_detect_all(model, im)
    assert apply_speed_options(model, channels_last=True) is model
    assert model.Conv_Body.conv_body.res1.conv1.weight.is_contiguous(
        memory_format=torch.channels_last)
    boxes, segms, _ = test_mod.im_detect_all(model, im)
    assert sum(len(b) for b in ref_boxes[1:]) > 0
    for j in range(1, 3):
        assert boxes[j].shape == ref_boxes[j].shape
        np.testing.assert_allclose(boxes[j], ref_boxes[j], rtol=1e-3, atol=0.05)
