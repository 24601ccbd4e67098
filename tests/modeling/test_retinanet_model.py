"""RetinaNet from every ``retinanet_*.yaml`` of Detectron's configs: builds, takes Detectron-named
weights with every parameter assigned (and writes them back), trains a few steps and infers on
the CPU (small images via overrides); the quick-start config learns a shapes minibatch; the
RETINANET.* keys change the model as Detectron's builder does."""
import glob
import os
import pickle

import numpy as np
import pytest
import torch

from pydetectron.core.config import (assert_and_infer_cfg, cfg, merge_cfg_from_file,
                                     merge_cfg_from_list)
from pydetectron.modeling.model_builder import Generalized_RCNN
from pydetectron.utils.detectron_weight_helper import (
    detectron_blobs_of, load_detectron_blobs, load_detectron_pkl, load_detectron_weight,
    save_detectron_weight)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DETECTRON_CONFIGS = sorted(glob.glob(os.path.join(
    ROOT, '..', 'shared', 'data', 'detectron_configs', '**', 'retinanet_*.yaml'), recursive=True))
QUICK = os.path.join(ROOT, 'configs', 'getting_started', 'shapes_retinanet_R-FPN-thin_gn_cpu.yaml')
SMALL = ['TRAIN.WEIGHTS', '', 'TEST.WEIGHTS', '', 'TRAIN.MAX_SIZE', 256, 'TRAIN.SCALES', (128,),
         'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False]

pytestmark = pytest.mark.usefixtures('fresh_cfg')


def build(path, extra=()):
    merge_cfg_from_file(path)
    merge_cfg_from_list(SMALL + list(extra))
    assert_and_infer_cfg(cache_urls=False)
    torch.manual_seed(0)
    return Generalized_RCNN()


def _roidb():
    return [{'boxes': np.array([[10, 12, 70, 90], [60, 30, 120, 110]], np.float32),
             'gt_classes': np.array([3, 7]), 'is_crowd': np.array([False, False])}]


def test_detectron_configs_are_found():
    names = [os.path.basename(p) for p in DETECTRON_CONFIGS]
    if not names:
        pytest.skip('../shared/data/detectron_configs not present')
    assert len(names) == 8 and 'retinanet_R-50-FPN_1x.yaml' in names


def test_r50_blob_names_are_detectrons():
    """The head and pyramid blobs of Detectron's R-50-FPN RetinaNet, spelled out by its rules
    (ConvShared: one set of parameters named after level 3; no P2; fpn_6 / fpn_7 from C5)."""
    path = [p for p in DETECTRON_CONFIGS if p.endswith('retinanet_R-50-FPN_1x.yaml')]
    if not path:
        pytest.skip('../shared/data/detectron_configs not present')
    model = build(path[0])
    blobs = {b for _, _, b in detectron_blobs_of(model)}
    head = {b for b in blobs if b.startswith(('retnet_', 'fpn_'))}
    expected = set()
    for i in range(4):
        for tower in ('cls', 'bbox'):
            expected |= {'retnet_%s_conv_n%d_fpn3_w' % (tower, i),
                         'retnet_%s_conv_n%d_fpn3_b' % (tower, i)}
    expected |= {'retnet_cls_pred_fpn3_w', 'retnet_cls_pred_fpn3_b', 'retnet_bbox_pred_fpn3_w',
                 'retnet_bbox_pred_fpn3_b', 'fpn_6_w', 'fpn_6_b', 'fpn_7_w', 'fpn_7_b'}
    for stage in ('res5_2_sum', 'res4_5_sum', 'res3_3_sum'):
        expected |= {'fpn_%s_w' % stage, 'fpn_%s_b' % stage}
    expected |= {'fpn_inner_res5_2_sum_w', 'fpn_inner_res5_2_sum_b'}
    for stage in ('res4_5_sum', 'res3_3_sum'):
        expected |= {'fpn_inner_%s_lateral_w' % stage, 'fpn_inner_%s_lateral_b' % stage}
    assert head == expected
    shapes = {b: tuple(t.shape) for _, t, b in detectron_blobs_of(model)}
    assert shapes['retnet_cls_pred_fpn3_w'] == (9 * 80, 256, 3, 3)
    assert shapes['retnet_bbox_pred_fpn3_w'] == (9 * 4, 256, 3, 3)
    assert shapes['fpn_6_w'] == (256, 2048, 3, 3) and shapes['fpn_7_w'] == (256, 256, 3, 3)
    # prior-probability init of the classifier's bias
    bias = dict(model.named_parameters())['RetinaNet.cls_pred.bias']
    torch.testing.assert_close(bias, torch.full_like(bias, -np.log(0.99 / 0.01)))


@pytest.mark.slow
@pytest.mark.parametrize('path', DETECTRON_CONFIGS, ids=[os.path.basename(p)
                                                         for p in DETECTRON_CONFIGS])
def test_detectron_config_loads_weights_trains_and_infers(path, tmp_path):
    torch.set_num_threads(1)
    model = build(path)
    # Detectron-named blobs, a distinct value in each (a swap of two same-shaped blobs shows),
    # plus the momentum blobs of a training snapshot, which loading ignores
    blobs = {}
    for i, (_, t, b) in enumerate(detectron_blobs_of(model)):
        blobs[b] = np.full(tuple(t.shape), 1e-4 * (i + 1), np.float32)
        blobs[b + '_momentum'] = np.zeros(tuple(t.shape), np.float32)
    if path.endswith('retinanet_R-50-FPN_1x.yaml'):
        # once through files: a Detectron pkl in, save_detectron_weight out
        src = tmp_path / 'model_final.pkl'
        with open(src, 'wb') as f:
            pickle.dump({'blobs': blobs}, f, protocol=2)
        report = load_detectron_weight(model, str(src))
        out = tmp_path / 'saved.pkl'
        save_detectron_weight(model, str(out))
        saved = load_detectron_pkl(str(out))
        assert set(saved) == {b for _, _, b in detectron_blobs_of(model)}
        for b, v in saved.items():
            np.testing.assert_array_equal(v, blobs[b])
    else:
        report = load_detectron_blobs(model, blobs)
    assert not report.unused_blobs and not report.skipped
    assert set(report.loaded) >= set(dict(model.named_parameters()))
    for name, t, b in detectron_blobs_of(model):
        np.testing.assert_array_equal(t.detach().numpy(), blobs[b], err_msg=name)

    # two SGD steps on one 128 x 128 image
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    data = torch.randn(1, 3, 128, 128) * 20
    im_info = torch.tensor([[128., 128., 1.]])
    before = model.RetinaNet.cls_pred.weight.detach().clone()
    for _ in range(2):
        out = model(data, im_info, _roidb())
        losses = out['losses']
        assert set(losses) == {'%s_fpn%d' % (k, l) for k in ('fl', 'retnet_loss_bbox')
                               for l in range(3, 8)}
        total = sum(losses.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        opt.step()
    assert not torch.equal(before, model.RetinaNet.cls_pred.weight)
    assert float(out['metrics']['retnet_fg_num']) > 1

    model.eval()
    from pydetectron.core.test import im_detect_all
    im = (np.random.RandomState(1).rand(100, 180, 3) * 255).astype(np.uint8)
    merge_cfg_from_list_unfrozen(['TEST.SCALE', 64, 'TEST.MAX_SIZE', 128])
    cls_boxes, segms, keyps = im_detect_all(model, im)
    assert segms is None and keyps is None and len(cls_boxes) == 81
    dets = np.vstack([b for b in cls_boxes[1:] if len(b)])
    assert 0 < dets.shape[0] <= 100
    assert (dets[:, 0] >= 0).all() and (dets[:, 2] <= 179).all() and (dets[:, 3] <= 99).all()


def merge_cfg_from_list_unfrozen(opts):
    cfg.immutable(False)
    merge_cfg_from_list(opts)
    cfg.immutable(True)


@pytest.mark.parametrize('opts, cls_ch, box_ch, n_bbox_convs', [
    ([], 9 * 3, 9 * 4, 4),
    (['RETINANET.SOFTMAX', True], 9 * 4, 9 * 4, 4),
    (['RETINANET.CLASS_SPECIFIC_BBOX', True], 9 * 3, 9 * 4 * 3, 4),
    (['RETINANET.SHARE_CLS_BBOX_TOWER', True, 'RETINANET.NUM_CONVS', 2], 9 * 3, 9 * 4, 0),
    (['RETINANET.SCALES_PER_OCTAVE', 2, 'RETINANET.ASPECT_RATIOS', (1.0,)], 2 * 3, 2 * 4, 4),
])
def test_retinanet_keys_shape_the_head(opts, cls_ch, box_ch, n_bbox_convs):
    model = build(QUICK, opts)
    head = model.RetinaNet
    assert head.cls_pred.out_channels == cls_ch and head.bbox_pred.out_channels == box_ch
    assert len(head.bbox_convs) == n_bbox_convs
    if cfg.RETINANET.SOFTMAX:
        b = head.cls_pred.bias.detach().view(9, 4)
        torch.testing.assert_close(b[:, 0], torch.full((9,), float(np.log(3 * 0.99 / 0.01))))
        assert (b[:, 1:] == 0).all()
    # the towers as Detectron wires them: NUM_CONVS x (conv, ReLU), the box predictor on the class
    # tower's output when shared, the same weights on every level
    import torch.nn.functional as F
    levels = [torch.randn(1, 64, 2 ** (5 - i), 2 ** (5 - i)) for i in range(5)]
    with torch.no_grad():
        cls_out, box_out = head(levels)
        for x, c, b in zip(levels, cls_out, box_out):
            f = x
            for conv in head.cls_convs:
                f = F.relu(F.conv2d(f, conv.weight, conv.bias, padding=1))
            torch.testing.assert_close(c, F.conv2d(f, head.cls_pred.weight, head.cls_pred.bias,
                                                   padding=1))
            if not cfg.RETINANET.SHARE_CLS_BBOX_TOWER:
                f = x
                for conv in head.bbox_convs:
                    f = F.relu(F.conv2d(f, conv.weight, conv.bias, padding=1))
            torch.testing.assert_close(b, F.conv2d(f, head.bbox_pred.weight,
                                                   head.bbox_pred.bias, padding=1))
    # train and infer once with these settings
    model.train()
    out = model(torch.randn(1, 3, 128, 160), torch.tensor([[128., 160., 1.]]), _roidb_small())
    total = sum(out['losses'].values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        dets = model.detect(torch.randn(1, 3, 128, 160), torch.tensor([[128., 160., 1.]]))
    assert dets[0]['boxes'].shape[0] > 0 and set(dets[0]['classes'].tolist()) <= {1, 2, 3}


def _roidb_small():
    return [{'boxes': np.array([[10, 12, 50, 60], [80, 30, 140, 100]], np.float32),
             'gt_classes': np.array([1, 3]), 'is_crowd': np.array([False, False])}]


def test_quick_start_learns_a_minibatch():
    """Ten SGD steps on one minibatch of the shapes quick start lower its loss at every step."""
    torch.set_num_threads(1)
    model = build(QUICK)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    data = torch.randn(2, 3, 160, 224, generator=g) * 30
    roidb = [_roidb_small()[0], {'boxes': np.array([[30, 40, 90, 100]], np.float32),
                                 'gt_classes': np.array([2]), 'is_crowd': np.array([False])}]
    # paint the objects so that there is something to learn
    for n, e in enumerate(roidb):
        for (x1, y1, x2, y2), c in zip(e['boxes'].astype(int), e['gt_classes']):
            data[n, c - 1, y1:y2 + 1, x1:x2 + 1] = 100.
    im_info = torch.tensor([[160., 224., 1.]] * 2)
    totals = []
    for _ in range(10):
        total = sum(model(data, im_info, roidb)['losses'].values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    # (measured: 1.524 -> 1.373, decreasing at every step)
    assert all(b < a for a, b in zip(totals, totals[1:])), totals
    assert totals[-1] < 0.92 * totals[0], totals


def test_config_errors():
    from pydetectron.core.config_compat import ConfigValueError
    for opts in (['TEST.BBOX_AUG.ENABLED', True], ['MODEL.MASK_ON', True],
                 ['RETINANET.PRIOR_PROB', 0.0]):
        merge_cfg_from_file(QUICK)
        merge_cfg_from_list(opts)
        with pytest.raises(ConfigValueError, match=opts[0].replace('.', r'\.')):
            assert_and_infer_cfg(cache_urls=False, make_immutable=False)
        from pydetectron.core.config import reset_cfg
        reset_cfg()


@pytest.mark.cuda
def test_quick_start_trains_and_detects_on_cuda():
    model = build(QUICK).cuda()
    model.train()
    data = torch.randn(2, 3, 160, 224).cuda() * 30
    im_info = torch.tensor([[160., 224., 1.]] * 2).cuda()
    roidb = [_roidb_small()[0]] * 2
    out = model(data, im_info, roidb)
    total = sum(out['losses'].values())
    assert total.is_cuda and torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        dets = model.detect(data, im_info)
    assert len(dets) == 2 and all(d['boxes'].is_cuda for d in dets)
