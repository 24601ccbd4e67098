"""Weights from the config (TRAIN.WEIGHTS, Detectron's URLs), fine-tuning to another class count,
and the refusal to train a frozen-BN body from random weights -- through the training tool."""
import importlib.util
import os

import numpy as np
import pytest
import torch

from pydetectron.engine import initial_weights

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THIN_CFG = os.path.join(ROOT, 'configs', 'getting_started',
                        'shapes_e2e_mask_rcnn_R-FPN-thin_gn_cpu.yaml')
FAST = ['SOLVER.MAX_ITER', '1', 'TRAIN.SNAPSHOT_ITERS', '1', 'NUM_GPUS', '1',
        'TRAIN.SCALES', '(96,)', 'TRAIN.MAX_SIZE', '160', 'SOLVER.BASE_LR', '0.0',
        'SOLVER.WEIGHT_DECAY', '0.0', 'SOLVER.WEIGHT_DECAY_GN', '0.0']
# the thin body with Detectron's frozen BN (AffineChannel) instead of GroupNorm
FROZEN_BN = ['RESNETS.TRANS_FUNC', 'bottleneck_transformation', 'RESNETS.STEM_FUNC',
             'basic_bn_stem', 'RESNETS.SHORTCUT_FUNC', 'basic_bn_shortcut',
             'RESNETS.USE_GN', 'False']


def _load(name, rel_path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, rel_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def rects(tmp_path_factory):
    engine_tests = _load('_engine_tests_iw', 'tests/core/test_test_engine.py')
    return engine_tests.make_rect_dataset(str(tmp_path_factory.mktemp('rects')), num_images=2)


def _train(tmp_path, dataset, sets, *flags):
    from pydetectron.core.config import reset_cfg
    from pydetectron.engine import checkpoint as ck
    from pydetectron.engine import launch
    train_net_step = _load('_train_net_step_iw', 'tools/train_net_step.py')
    reset_cfg()
    args = train_net_step.parse_args(['--dataset', dataset, '--cfg', THIN_CFG, '--no_cuda',
                                      '--bs', '1', '--nw', '0', '--output_dir', str(tmp_path),
                                      *flags, '--set'] + FAST + list(sets))
    assert launch.main(args) == 0
    return ck.load_checkpoint(ck.find_latest_checkpoint(str(tmp_path)))['model']


def _pkl_of_model(path, sets, num_classes, seed=5):
    """A Detectron pkl of the thin model built with ``sets`` and ``num_classes``, random values."""
    from pydetectron.core.config import (assert_and_infer_cfg, merge_cfg_from_file,
                                         merge_cfg_from_list, reset_cfg)
    from pydetectron.modeling.model_builder import Generalized_RCNN
    from pydetectron.utils.detectron_weight_helper import save_detectron_weight
    reset_cfg()
    merge_cfg_from_file(THIN_CFG)
    merge_cfg_from_list(list(sets) + ['MODEL.NUM_CLASSES', num_classes])
    assert_and_infer_cfg(cache_urls=False)
    torch.manual_seed(seed)
    model = Generalized_RCNN()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.02 + 0.5)
    save_detectron_weight(model, path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reset_cfg()
    return state


def test_url_resolves_to_the_download_cache(tmp_path):
    url = 'https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl'
    with pytest.raises(FileNotFoundError) as e:
        initial_weights.resolve_weights_url(url, 'TRAIN.WEIGHTS', str(tmp_path))
    msg = str(e.value)
    local = tmp_path / 'detectron' / 'ImageNetPretrained' / 'MSRA' / 'R-50.pkl'
    assert '\n' not in msg and 'TRAIN.WEIGHTS' in msg
    assert 'curl -fL -o {} {}'.format(local, url) in msg
    local.parent.mkdir(parents=True)
    local.write_bytes(b'x')
    assert initial_weights.resolve_weights_url(url, 'TRAIN.WEIGHTS', str(tmp_path)) == str(local)
    assert initial_weights.resolve_weights_url('/a/b.pkl') == '/a/b.pkl'


@pytest.mark.slow
def test_train_weights_start_the_run(tmp_path, fresh_cfg, rects):
    """TRAIN.WEIGHTS of the config initialises every layer (learning rate 0: the step-0
    checkpoint holds exactly the file's values)."""
    pkl = str(tmp_path / 'init.pkl')
    ref = _pkl_of_model(pkl, [], num_classes=4)
    got = _train(tmp_path / 'run', rects, ['TRAIN.WEIGHTS', pkl])
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert torch.equal(got[k], v), k


@pytest.mark.slow
def test_fine_tuning_skips_class_layers_by_name(tmp_path, fresh_cfg, rects, capfd):
    pkl = str(tmp_path / 'coco.pkl')
    ref = _pkl_of_model(pkl, [], num_classes=81)
    capfd.readouterr()
    got = _train(tmp_path / 'ft', rects, ['TRAIN.WEIGHTS', pkl])
    logged = ''.join(capfd.readouterr())
    class_layers = {'Box_Outs.cls_score.weight', 'Box_Outs.cls_score.bias',
                    'Box_Outs.bbox_pred.weight', 'Box_Outs.bbox_pred.bias',
                    'Mask_Outs.classify.weight', 'Mask_Outs.classify.bias'}
    for k, v in ref.items():
        if k in class_layers:
            assert got[k].shape[0] != v.shape[0], k
        else:
            assert torch.equal(got[k], v), k
    warning = [line for line in logged.splitlines() if 'Fine-tuning' in line]
    assert len(warning) == 1, logged[-3000:]
    for name in class_layers:
        assert name in warning[0]
    # ... and --strict_class_heads makes it an error naming them
    from pydetectron.engine.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match='Box_Outs.cls_score.weight'):
        _train(tmp_path / 'strict', rects, ['TRAIN.WEIGHTS', pkl], '--strict_class_heads')


@pytest.mark.slow
def test_frozen_bn_from_random_weights_is_refused(tmp_path, fresh_cfg, rects):
    from pydetectron.core.config import ConfigValueError
    with pytest.raises(ConfigValueError, match='frozen BatchNorm') as e:
        _train(tmp_path / 'r', rects, FROZEN_BN)
    assert '\n' not in str(e.value) and '--allow_random_frozen_bn' in str(e.value)
    # said explicitly, it trains, its affines started from the first batch's statistics (not
    # the constant fills 1 and 0, which let a random body's activations blow up)
    ok = _train(tmp_path / 'ok', rects, FROZEN_BN, '--allow_random_frozen_bn')
    affine = [k[:-len('.weight')] for k in ok if k.endswith('.weight') and k[:-6] + 'bias' in ok
              and ok[k].dim() == 1 and k.startswith('Conv_Body.conv_body.')]
    assert affine
    for name in affine:
        assert not torch.all(ok[name + '.weight'] == 1), name
        assert not torch.all(ok[name + '.bias'] == 0), name
    # and weights for the body lift the refusal, and are kept as loaded
    pkl = str(tmp_path / 'bn.pkl')
    ref = _pkl_of_model(pkl, FROZEN_BN, num_classes=4)
    got = _train(tmp_path / 'w', rects, FROZEN_BN + ['TRAIN.WEIGHTS', pkl])
    for key in ['Conv_Body.conv_body.res1.conv1.weight'] + [a + '.weight' for a in affine]:
        assert torch.equal(got[key], ref[key]), key


def test_load_weights_partial_keeps_missing_layers(fresh_cfg, tmp_path):
    """An ImageNet-style pkl (body blobs only) fills the body; the heads keep their values."""
    from pydetectron.core.config import assert_and_infer_cfg, merge_cfg_from_file
    from pydetectron.modeling.model_builder import Generalized_RCNN
    from pydetectron.utils.detectron_weight_helper import (detectron_blobs_of,
                                                           save_detectron_weight)
    import pickle
    merge_cfg_from_file(THIN_CFG)
    assert_and_infer_cfg(cache_urls=False, make_immutable=False)
    torch.manual_seed(1)
    src = Generalized_RCNN()
    blobs = {b: t.detach().numpy() + 1.0 for n, t, b in detectron_blobs_of(src)
             if n.startswith('Conv_Body.conv_body.')}
    pkl = str(tmp_path / 'body.pkl')
    with open(pkl, 'wb') as f:
        pickle.dump(blobs, f, protocol=2)
    torch.manual_seed(2)
    model = Generalized_RCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = initial_weights.load_weights(model, pkl, partial=True)
    assert loaded and all(n.startswith('Conv_Body.conv_body.') for n in loaded)
    mapping, _ = model.detectron_weight_mapping()
    for k, v in model.state_dict().items():
        if k in loaded:
            np.testing.assert_array_equal(v.numpy(), blobs[mapping[k]])
        else:
            assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError):        # not partial: every parameter must be in the file
        initial_weights.load_weights(Generalized_RCNN(), pkl, partial=False)
