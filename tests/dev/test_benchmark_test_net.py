"""dev/benchmark_test_net.py: the tools' --compile and --shape_buckets reach the timed test_net."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'dev'))

import benchmark_test_net as btn  # noqa: E402


def _ours(coco_mini, *flags):
    dataset = 'coco_json:%s:%s' % (
        os.path.join(coco_mini, 'annotations', 'instances_val2017.json'),
        os.path.join(coco_mini, 'images', 'val2017'))
    args = btn.parse_args(['--device', 'cpu', '--scale', '176', '--max-size', '333',
                           '--max-images', '2', '--dataset', dataset] + list(flags))
    args.dataset = dataset
    return btn.Ours(args)


@pytest.mark.slow
def test_shape_buckets_pad_the_timed_blobs(coco_mini, registry_env, monkeypatch):
    from pydetectron.core import test_engine
    from pydetectron.core.config import cfg, reset_cfg
    shapes = []
    real = test_engine.im_detect_all_batch

    def spy(model, ims, *a, blob=None, **kw):
        shapes.append(tuple(blob.data.shape[-2:]))
        return real(model, ims, *a, blob=blob, **kw)

    monkeypatch.setattr(test_engine, 'im_detect_all_batch', spy)
    try:
        assert _ours(coco_mini).run() == (2, 100.0)
    finally:
        reset_cfg()
    unpadded, shapes = list(shapes), []
    try:
        ours = _ours(coco_mini, '--shape_buckets', '64')
        assert cfg.SHAPE_BUCKETS == 64
        assert ours.run() == (2, 100.0)
    finally:
        reset_cfg()
    # buckets of 64, and the scale rule's largest sides (176 and 333 rounded up to the stride 32)
    # kept as they are
    assert len(shapes) == 2
    assert all(side % 64 == 0 or side in (192, 352) for shape in shapes for side in shape), shapes
    assert any(side % 32 == 0 and side % 64 and side not in (192, 352)
               for shape in unpadded for side in shape), unpadded


def test_compile_mode_compiles_the_body_with_buckets(coco_mini, registry_env):
    from pydetectron.core.config import cfg, reset_cfg
    try:
        ours = _ours(coco_mini, '--compile', 'reduce-overhead')
        assert cfg.SHAPE_BUCKETS == 160                      # a CUDA-graph mode's default
        assert ours.model.Conv_Body._compiled_call_impl is not None
        assert getattr(ours.model.RPN, '_compiled_call_impl', None) is None
    finally:
        reset_cfg()
    try:
        plain = _ours(coco_mini)
        assert cfg.SHAPE_BUCKETS == 0
        assert plain.model.Conv_Body._compiled_call_impl is None
    finally:
        reset_cfg()


@pytest.mark.parametrize('flags, message', [
    (['--shape_buckets', '50'], '--shape_buckets 50: expected 0 (off) or a multiple of'),
    (['--compile', 'bogus'], '--compile bogus: expected one of')])
def test_a_bad_speed_flag_is_one_line_and_exit_2(coco_mini, registry_env, capsys, flags,
                                                  message):
    from pydetectron.core.config import reset_cfg
    dataset = 'coco_json:%s:%s' % (
        os.path.join(coco_mini, 'annotations', 'instances_val2017.json'),
        os.path.join(coco_mini, 'images', 'val2017'))
    try:
        with pytest.raises(SystemExit) as e:
            btn.main(['--device', 'cpu', '--impl', 'ours', '--max-images', '1',
                      '--dataset', dataset] + flags)
    finally:
        reset_cfg()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('benchmark_test_net.py: error: ' + message) and '\n' not in err
