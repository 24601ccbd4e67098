"""KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH, as Detectron honours it: training on precomputed
proposals, a minibatch whose keypoint RoIs hold no more visible keypoints than the key does not
train -- the next minibatch is drawn in its place (Detectron's loader); end-to-end, the key has no
effect (Detectron's proposal-labelling ops ignore the verdict) and setting it warns.

Real coco_mini person keypoints, one image per minibatch, RoIs = the image's gt rows (no other
proposals, so every person is a candidate and the sampling takes them all). The visible in-box
keypoint counts below are read from the COCO json by hand (``_visible_in_box``), not by the code:
image 183872 has 17, image 69468 has 9, image 790 has 44.
"""
import json
import logging
import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'modeling', 'targets'))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'engine'))
from _targets_coco import blob_entry, load_roidb  # noqa: E402

ANN = 'person_keypoints_train2017.json'
THIN_KP_CFG = os.path.join(ROOT, 'configs', 'getting_started',
                           'keypoints_shapes_e2e_keypoint_rcnn_R-FPN-thin_gn_cpu.yaml')
KEY = 'KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH'
FEW, SEVENTEEN, MANY = 69468, 183872, 790


def _visible_in_box(coco_mini, image_id):
    """Visible (v > 0) keypoints inside their person's box (inclusive, x2 = x + w - 1), from the
    json itself."""
    with open(os.path.join(coco_mini, 'annotations', ANN)) as f:
        anns = [a for a in json.load(f)['annotations']
                if a['image_id'] == image_id and not a['iscrowd']]
    n = 0
    for a in anns:
        x, y, w, h = a['bbox']
        k = np.array(a['keypoints'], np.float64).reshape(17, 3)
        n += int(((k[:, 2] > 0) & (k[:, 0] >= x) & (k[:, 0] <= x + max(0, w - 1))
                  & (k[:, 1] >= y) & (k[:, 1] <= y + max(0, h - 1))).sum())
    return n


def _configure(fresh_cfg, faster_rcnn, min_count):
    from pydetectron.core.config import (assert_and_infer_cfg, merge_cfg_from_file,
                                         merge_cfg_from_list)
    merge_cfg_from_file(THIN_KP_CFG)
    merge_cfg_from_list(['MODEL.FASTER_RCNN', faster_rcnn, 'KRCNN.NUM_KEYPOINTS', 17,
                         'TRAIN.BATCH_SIZE_PER_IM', 64, KEY, min_count])
    assert_and_infer_cfg(cache_urls=False, make_immutable=False)


def _minibatch(coco_mini, image_id, short_side=96):
    """One loader minibatch (the trainer's per-device lists) of the coco_mini image ``image_id``."""
    entry = next(e for e in load_roidb(coco_mini, ANN) if e['id'] == image_id)
    scale = short_side / min(entry['height'], entry['width'])
    roidb, im_info = blob_entry(entry, scale)
    H = int(-(-im_info[0] // 32) * 32)
    W = int(-(-im_info[1] // 32) * 32)
    data = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(image_id)) * 50
    return {'data': [data], 'im_info': [torch.tensor([im_info], dtype=torch.float32)],
            'roidb': [[roidb]]}


def _model():
    from pydetectron.modeling.model_builder import Generalized_RCNN
    torch.manual_seed(0)
    return Generalized_RCNN().train()


def _forward(model, mb):
    return model(mb['data'][0], mb['im_info'][0], mb['roidb'][0])


def test_hand_counts_of_the_chosen_images(coco_mini):
    assert [_visible_in_box(coco_mini, i) for i in (FEW, SEVENTEEN, MANY)] == [9, 17, 44]


@pytest.mark.parametrize('min_count,valid', [(16, 1.), (17, 0.), (20, 0.), (0, 1.)])
def test_fast_rcnn_minibatch_verdict_at_the_threshold(coco_mini, fresh_cfg, min_count, valid):
    """Detectron's rule: valid when #visible > the key (17 visible: 16 passes, 17 does not)."""
    _configure(fresh_cfg, False, min_count)
    out = _forward(_model(), _minibatch(coco_mini, SEVENTEEN))
    assert out['minibatch_valid'].dtype == torch.float32
    assert out['minibatch_valid'].item() == valid
    assert 'loss_kps' in out['losses']


def test_end_to_end_models_have_no_verdict(coco_mini, fresh_cfg):
    _configure(fresh_cfg, True, 20)
    out = _forward(_model(), _minibatch(coco_mini, FEW))   # 9 <= 20, yet it trains
    assert 'minibatch_valid' not in out
    assert 'loss_kps' in out['losses']


def _train(mbs, max_iter=1, iter_size=1):
    from pydetectron.engine.trainer import Trainer
    model = _model()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                          momentum=0.9)

    class Sched:
        def set_lr_for_iter(self, step):
            return 0.01

    trainer = Trainer(model, opt, Sched(), lambda start: iter(mbs[start:]), max_iter=max_iter,
                      iter_size=iter_size, progress=False)
    last = trainer.train()
    return trainer, model, last


def test_invalid_minibatch_is_dropped_and_the_next_one_trains(coco_mini, fresh_cfg):
    """Default threshold 20: the 9-keypoint minibatch is drawn, dropped, and the 44-keypoint one
    trains in its place; the result equals training on the 44-keypoint one alone (the dropped
    one changed nothing) and the data order counts both."""
    _configure(fresh_cfg, False, 20)
    few, many = _minibatch(coco_mini, FEW), _minibatch(coco_mini, MANY)
    trainer, model, last = _train([few, few, many])
    assert last == 0 and len(trainer.loss_history) == 1
    assert trainer.invalid_minibatches == 2 and trainer._consumed_at_step_end == 3
    ref_trainer, ref, _ = _train([many])
    assert ref_trainer._consumed_at_step_end == 1
    assert trainer.loss_history == ref_trainer.loss_history
    before = _model().state_dict()
    changed = 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
        changed += not torch.equal(v, before[k])
    assert changed > 0    # the valid minibatch did train


def test_only_invalid_minibatches_leave_the_model_untouched(coco_mini, fresh_cfg, monkeypatch):
    from pydetectron.engine import trainer as trainer_module
    from pydetectron.utils.errors import ConfigError
    _configure(fresh_cfg, False, 20)
    monkeypatch.setattr(trainer_module, 'MAX_CONSECUTIVE_INVALID', 3)
    few = _minibatch(coco_mini, FEW)
    with pytest.raises(ConfigError, match=KEY + ' = 20: the last 3 minibatches') as e:
        _train([few] * 5)
    assert '\n' not in str(e.value)


def test_end_to_end_trains_on_the_few_keypoints_minibatch(coco_mini, fresh_cfg):
    _configure(fresh_cfg, True, 20)
    trainer, _, last = _train([_minibatch(coco_mini, FEW)])
    assert last == 0 and trainer.invalid_minibatches == 0 and trainer._consumed_at_step_end == 1


@pytest.mark.parametrize('opts,warned', [
    (['MODEL.FASTER_RCNN', True, KEY, 5], 'end-to-end training'),
    (['MODEL.FASTER_RCNN', True, KEY, 20], None),           # the default: no warning
    (['MODEL.FASTER_RCNN', False, KEY, 5], None),           # honoured: no warning
    (['MODEL.KEYPOINTS_ON', False, KEY, 5], 'MODEL.KEYPOINTS_ON is off'),
])
def test_warning_where_the_key_has_no_effect(fresh_cfg, caplog, opts, warned):
    from pydetectron.core.config import (assert_and_infer_cfg, merge_cfg_from_file,
                                         merge_cfg_from_list)
    merge_cfg_from_file(THIN_KP_CFG)
    merge_cfg_from_list(opts)
    with caplog.at_level(logging.WARNING, logger='pydetectron.core.config'):
        assert_and_infer_cfg(cache_urls=False, make_immutable=False)
    lines = [r.getMessage() for r in caplog.records if KEY in r.getMessage()]
    if warned is None:
        assert lines == []
    else:
        assert len(lines) == 1 and warned in lines[0] and 'has no effect' in lines[0], lines
