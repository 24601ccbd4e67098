"""The model's public API says what it does: ``rois`` given to a model with an RPN are the boxes
its heads run on (never silently replaced by its proposals), an RPN-only model refuses them, and
the raw class / mask logits are there beside the probabilities."""
import os

import pytest
import torch

from pydetectron.core.config import assert_and_infer_cfg, merge_cfg_from_file, merge_cfg_from_list

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THIN_CFG = os.path.join(ROOT, 'configs', 'getting_started',
                        'shapes_e2e_mask_rcnn_R-FPN-thin_gn_cpu.yaml')


def _model(*sets):
    from pydetectron.modeling.model_builder import Generalized_RCNN
    merge_cfg_from_file(THIN_CFG)
    merge_cfg_from_list(list(sets))
    assert_and_infer_cfg(cache_urls=False, make_immutable=False)
    torch.manual_seed(0)
    return Generalized_RCNN().eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    data = torch.randn(1, 3, 128, 160, generator=g) * 50
    im_info = torch.tensor([[128., 160., 1.]])
    rois = torch.tensor([[0, 10, 12, 70, 90], [0, 40.5, 3, 150, 60], [0, 0, 0, 30, 20]])
    return data, im_info, rois


def test_given_rois_are_the_boxes_the_heads_run_on(fresh_cfg):
    model = _model()
    data, im_info, rois = _inputs()
    with torch.no_grad():
        own = model(data, im_info)
        out = model(data, im_info, rois=rois)
        # the reference: the heads applied to the given boxes by hand
        feat = model.Box_Head(model.conv_body_only(data), rois)
        x = feat.flatten(1)
        ref_logits = model.Box_Outs.cls_score(x)
        ref_deltas = model.Box_Outs.bbox_pred(x)
    assert own['rois'].shape[0] != rois.shape[0]       # its own proposals differ
    assert torch.equal(out['rois'], rois)
    assert 'rpn_roi_probs' not in out
    assert torch.equal(out['cls_logits'], ref_logits)
    assert torch.equal(out['bbox_pred'], ref_deltas)


def test_logits_beside_probabilities(fresh_cfg):
    model = _model()
    data, im_info, rois = _inputs()
    with torch.no_grad():
        out = model(data, im_info)
        torch.testing.assert_close(out['cls_score'], torch.softmax(out['cls_logits'], 1),
                                   rtol=0, atol=0)
        assert not torch.allclose(out['cls_score'], out['cls_logits'])
        blob_conv = out['blob_conv']
        logits = model.mask_logits(blob_conv, rois)
        probs = model.mask_net(blob_conv, rois)
    assert logits.shape == probs.shape and logits.shape[:2] == (3, model.Mask_Outs.num_cls)
    assert torch.equal(probs, torch.sigmoid(logits))
    assert not torch.equal(logits, probs)


def test_rpn_only_model_refuses_rois(fresh_cfg):
    model = _model('MODEL.RPN_ONLY', 'True', 'MODEL.FASTER_RCNN', 'False', 'MODEL.MASK_ON',
                   'False')
    data, im_info, rois = _inputs()
    with pytest.raises(ValueError, match='RPN-only'):
        with torch.no_grad():
            model(data, im_info, rois=rois)
