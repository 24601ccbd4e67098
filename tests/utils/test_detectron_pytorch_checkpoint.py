"""Detectron.pytorch checkpoints, built from the key layout that project's own model builder gives
(../shared/data/detectron_pytorch_checkpoints.json, with its own module-to-blob mapping as the
reference), load here through --load_ckpt and TRAIN.WEIGHTS, in its legacy (non-zip) and zip
formats, and give the same outputs as the same weights loaded from a Detectron pkl."""
import json
import os
import types

import numpy as np
import pytest
import torch

from pydetectron.core.config import (assert_and_infer_cfg, cfg, merge_cfg_from_file,
                                     merge_cfg_from_list)
from pydetectron.utils import detectron_pytorch_checkpoint as dpt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.normpath(os.path.join(ROOT, '..', 'shared'))
LAYOUT = os.path.join(SHARED, 'data', 'detectron_pytorch_checkpoints.json')
DP_CONFIGS = os.path.join(SHARED, 'data', 'detectron_pytorch_configs')


@pytest.fixture(scope='module')
def layout():
    if not os.path.isfile(LAYOUT):
        pytest.skip('../shared/data/detectron_pytorch_checkpoints.json not present')
    with open(LAYOUT) as f:
        return json.load(f)


MODELS = ['configs/baselines/e2e_mask_rcnn_R-50-C4_1x.yaml',
          'configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml',
          'configs/baselines/e2e_faster_rcnn_R-50-FPN_1x.yaml',
          'configs/baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml',
          'configs/gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn.yaml',
          'configs/baselines/e2e_mask_rcnn_X-101-32x8d-FPN_1x.yaml']


def test_layout_lists_the_six_models(layout):
    assert sorted(layout['models']) == sorted(MODELS)


@pytest.mark.parametrize('name', MODELS)
def test_blob_names_are_detectron_pytorch_own(layout, name):
    """The converter names every key as Detectron.pytorch's detectron_weight_mapping does
    (None where that project neither loads nor saves the tensor)."""
    m = layout['models'][name]
    shapes = {k: s for k, s, _ in m['state_dict']}
    assert dpt.is_detectron_pytorch_state_dict(shapes)
    got = dpt.detectron_pytorch_blob_names(shapes)
    assert got == m['detectron_weight_mapping']


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match='Box_Head.mystery.weight'):
        dpt.detectron_pytorch_blob_names({'Box_Head.fc1.weight': (4, 8),
                                          'Box_Head.mystery.weight': (3, 3)})


def test_own_state_dict_is_not_taken_for_detectron_pytorch(fresh_cfg):
    from pydetectron.modeling.model_builder import Generalized_RCNN
    _configure('configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml', 81)
    assert not dpt.is_detectron_pytorch_state_dict(Generalized_RCNN().state_dict())


def _configure(name, num_classes):
    merge_cfg_from_file(os.path.join(DP_CONFIGS, name[len('configs/'):]))
    merge_cfg_from_list(['MODEL.NUM_CLASSES', num_classes,
                         'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False,
                         'TEST.SCALE', 96, 'TEST.MAX_SIZE', 128,
                         'TEST.RPN_POST_NMS_TOP_N', 50])
    assert_and_infer_cfg(cache_urls=False)


def _randomised_model(seed):
    from pydetectron.modeling.model_builder import Generalized_RCNN
    torch.manual_seed(seed)
    model = Generalized_RCNN()
    with torch.no_grad():
        for p in model.parameters():     # non-trivial values everywhere (affines included)
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if p.dim() == 1 else 0.0) * 0.1)
    return model.eval()


def _detectron_pytorch_checkpoint(layout_model, blobs, seed):
    """A checkpoint as Detectron.pytorch's train_net_step writes it: its keys in its order,
    each tensor from the blob its own mapping names; tensors it maps to null get noise (a
    converter that used them would change the outputs)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in layout_model['state_dict']:
        assert dtype == 'float32'
        blob = layout_model['detectron_weight_mapping'][key]
        if blob is None:
            state[key] = torch.randn(shape, generator=g)
        else:
            assert list(blobs[blob].shape) == shape, key
            state[key] = torch.from_numpy(blobs[blob].copy())
    return {'step': 89999, 'train_size': 117266, 'batch_size': 16, 'model': state,
            'optimizer': {'state': {}, 'param_groups': [
                {'lr': 0.02, 'momentum': 0.9, 'dampening': 0, 'weight_decay': 1e-4,
                 'nesterov': False, 'params': [140000000 + i for i in range(3)]}]}}


def _outputs(model, im):
    from pydetectron.core.test import im_detect_all
    with torch.no_grad():
        blob = torch.from_numpy(im.astype(np.float32) - cfg.PIXEL_MEANS.astype(np.float32))
        data = blob.permute(2, 0, 1)[None].contiguous()
        out = model(data, torch.tensor([[im.shape[0], im.shape[1], 1.0]]))
        dets = im_detect_all(model, im, keypoint_names=[str(i) for i in range(17)])
    return out, dets


@pytest.mark.slow
# the C4 mask model (its mask head's shared res5 keys map to null) and the FPN keypoint model
# (its fixed upsampling maps to null); every layout's names are checked above
@pytest.mark.parametrize('name', [MODELS[0], MODELS[3]], ids=['mask_C4', 'keypoint_FPN'])
def test_checkpoint_gives_the_pkl_outputs(layout, name, tmp_path, fresh_cfg):
    from pydetectron.engine.inference import initialize_model_from_cfg
    from pydetectron.engine.initial_weights import load_weights
    from pydetectron.utils.detectron_weight_helper import load_detectron_pkl, \
        save_detectron_weight
    m = layout['models'][name]
    _configure(name, m['num_classes'])
    pkl = str(tmp_path / 'model_final.pkl')
    save_detectron_weight(_randomised_model(seed=1), pkl)
    blobs = load_detectron_pkl(pkl)
    ckpt = _detectron_pytorch_checkpoint(m, blobs, seed=2)
    legacy, zipped = str(tmp_path / 'legacy.pth'), str(tmp_path / 'zip.pth')
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    torch.save(ckpt, zipped)
    del ckpt

    im = (np.random.RandomState(3).rand(96, 128, 3) * 255).astype(np.uint8)
    args = types.SimpleNamespace(load_ckpt=None, load_detectron=pkl, cuda=False)
    ref_model = initialize_model_from_cfg(args)
    ref_out, ref_dets = _outputs(ref_model, im)
    ref_state = ref_model.state_dict()
    for path in (legacy, zipped):
        # the test tools' --load_ckpt
        model = initialize_model_from_cfg(types.SimpleNamespace(
            load_ckpt=path, load_detectron=None, cuda=False))
        for k, v in model.state_dict().items():
            assert torch.equal(v, ref_state[k]), k
        out, dets = _outputs(model, im)
        for k in ('rois', 'cls_score', 'bbox_pred'):
            assert torch.equal(out[k], ref_out[k]), k
        for a, b in zip(dets[0], ref_dets[0]):
            np.testing.assert_array_equal(a, b)
        # the training tool's --load_ckpt / TRAIN.WEIGHTS
        model = _randomised_model(seed=4)
        loaded = load_weights(model, path, partial=False)
        assert len(loaded) > 100
        for k, v in model.state_dict().items():
            assert torch.equal(v, ref_state[k]), k
