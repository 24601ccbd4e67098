"""dev/count_ops.py on the CPU: one training step's ATen operators, attributed to the package's
source files."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'dev'))

import count_ops  # noqa: E402


@pytest.mark.slow
def test_count_ops_attributes_a_steps_operators_to_source_files(registry_env, capsys):
    count_ops.main(['--image_size', '64x96', '--lines', '3'])
    out = capsys.readouterr().out.splitlines()
    total = int(out[0].split(': ')[1].split()[0])
    rows = [line.split(None, 1) for line in out[1:out.index('-- the 3 busiest lines')]]
    per_file = {name: int(n) for n, name in rows}
    assert sum(per_file.values()) == total > 1000
    # the proposals and the targets issue operators; backward and the optimizer do too
    assert per_file['lib/pydetectron/modeling/generate_proposals.py'] > 0
    assert per_file['lib/pydetectron/modeling/targets/mask_rcnn.py'] > 0
    # the mask targets' polygon rasterization: one operator (ops.polygon_masks_in_boxes) with the
    # compiled extension, else the pure-torch path of targets/rasterize.py
    from pydetectron.ops import extension_available
    if extension_available():
        assert per_file['lib/pydetectron/ops/polygon_mask.py'] == 1
        assert 'lib/pydetectron/modeling/targets/rasterize.py' not in per_file
    else:
        assert per_file['lib/pydetectron/modeling/targets/rasterize.py'] > 0
    assert per_file['backward / optimizer'] > 0


@pytest.mark.parametrize('flags, fixed', [((), None), (('--fixed-targets',), True)])
def test_fixed_targets_flag_sets_the_models_choice(registry_env, capsys, monkeypatch, flags,
                                                   fixed):
    """--fixed-targets counts the step with the training targets in fixed shapes (the GPU's
    default; the CPU's is the unpadded targets): the model's ``fixed_target_shapes``."""
    built = []
    real = count_ops.models.build_ours

    def build(*a, **k):
        built.append(real(*a, **k))
        return built[-1]
    monkeypatch.setattr(count_ops.models, 'build_ours', build)
    monkeypatch.setattr(count_ops.timing, 'train_step_fn', lambda *a: (lambda: None))
    count_ops.main(['--image_size', '64x96'] + list(flags))
    assert getattr(built[0], 'fixed_target_shapes', None) is fixed
    assert 'training step, 2 image(s) of 64x96' in capsys.readouterr().out


def test_layout_changes_flags_conversions_and_mixed_layouts_only():
    """LayoutChanges records an operator whose 4-D output is laid out otherwise than an input
    map of its shape -- a conversion, an elementwise op over both layouts -- and nothing for
    same-layout work, views of another shape, or maps of one channel (both layouts at once)."""
    import torch
    nchw = torch.randn(2, 8, 5, 6)
    nhwc = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    changes = count_ops.LayoutChanges()
    with changes:
        torch.relu(nhwc)                                        # same layout
        nhwc + nhwc
        nhwc.permute(0, 2, 3, 1).contiguous()                   # another shape
        torch.randn(2, 1, 5, 6).contiguous(memory_format=torch.channels_last).contiguous()
        nhwc.contiguous()                                        # NHWC -> NCHW: 1
        nchw.contiguous(memory_format=torch.channels_last)       # NCHW -> NHWC: 2
        nchw + nhwc                                              # mixed: 3
    (where, (n, mb, kinds)), = changes.by_line.items()
    assert where == 'backward / optimizer'         # no pydetectron frame called them
    assert n == 3 and mb == pytest.approx(3 * 2 * 8 * 5 * 6 * 4 / 2 ** 20)
    assert any('nhwc->nchw' in k for k in kinds) and any('nchw+nhwc->' in k for k in kinds)


def test_a_missing_config_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        count_ops.main(['--layouts', '--cfg', 'configs/nope.yaml'])
    assert e.value.code == 2
    assert '--cfg: configs/nope.yaml not found' in capsys.readouterr().err
