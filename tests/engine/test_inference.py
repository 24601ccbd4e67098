"""engine.inference: the test tools' inference over datasets -- run_inference's results, files and
re-evaluation, proposal recall of RPN-only models, the child path of one range, the model built
from the tools' weights, and the dataset names handed to child processes. The child processes
themselves run in tests/tools/test_test_net.py."""
import importlib.util
import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval

from pydetectron.core import test_engine
from pydetectron.core.config import cfg
from pydetectron.datasets.json_dataset import JsonDataset
from pydetectron.engine import inference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_core_tests():
    """tests/core/test_test_engine.py by path: the synthetic rectangles dataset and fake model."""
    path = os.path.join(ROOT, 'tests', 'core', 'test_test_engine.py')
    spec = importlib.util.spec_from_file_location('_core_test_engine_tests', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_core = _load_core_tests()
rect_setup = _core.rect_setup      # the fixture: (dataset name, args), cfg for the fake model
_model = _core._model


def _stats_from_file(dataset, res_file, iou_type):
    coco = dataset.COCO
    e = COCOeval(coco, coco.loadRes(res_file), iou_type)
    e.evaluate()
    e.accumulate()
    e.summarize()
    return e.stats


def test_run_inference_saves_scores_and_writes_results(rect_setup):
    dataset_name, args = rect_setup
    results = inference.run_inference(args, model=_model())
    ds = JsonDataset(dataset_name)
    res = results[ds.name]
    assert set(res) == {'box', 'mask'}
    assert res['box']['AP'] == pytest.approx(1.0)  # exact rectangles, mapped to json ids 1, 3, 7
    assert res['mask']['AP'] > 0.8
    # detections.pkl: Detectron's [class][image] layout, images in sorted-id order, and the cfg
    with open(os.path.join(args.output_dir, 'detections.pkl'), 'rb') as f:
        dets = pickle.load(f)
    assert len(dets['all_boxes']) == 4 and all(len(c) == 6 for c in dets['all_boxes'][1:])
    assert 'MODEL' in dets['cfg']
    n_gt = len(ds.COCO.getAnnIds())
    assert sum(len(b) for c in dets['all_boxes'][1:] for b in c) == n_gt
    # the result JSONs the tool leaves behind score what run_inference reported
    for task, prefix, iou_type in (('box', 'bbox', 'bbox'), ('mask', 'segmentations', 'segm')):
        res_file = os.path.join(args.output_dir, '%s_%s_results.json' % (prefix, ds.name))
        stats = _stats_from_file(ds, res_file, iou_type)
        assert list(res[task].values()) == pytest.approx(
            [stats[i] for i in (0, 1, 2, 3, 4, 5)])
    # re-evaluating the saved detections without the model gives the same numbers
    again = test_engine.evaluate_detections_file(
        os.path.join(args.output_dir, 'detections.pkl'), dataset_name,
        os.path.join(args.output_dir, 'again'))
    assert again == results


def test_rpn_only_proposal_recall(rect_setup):
    dataset_name, args = rect_setup
    cfg.MODEL.RPN_ONLY = True
    cfg.MODEL.MASK_ON = False
    results = inference.run_inference(args, model=_model())
    ar = results[JsonDataset(dataset_name).name]['box_proposal']
    assert ar['AR@100'] == pytest.approx(1.0)  # every rectangle is among the proposals
    assert ar['ARl@100'] == -1 or ar['ARl@100'] == pytest.approx(0.0)  # no large objects
    with open(os.path.join(args.output_dir, 'rpn_proposals.pkl'), 'rb') as f:
        props = pickle.load(f)
    assert len(props['boxes']) == len(props['ids']) == 6
    assert all(np.all(np.diff(s) <= 0) for s in props['scores'])  # best first


def test_portable_dataset_name(rect_setup):
    dataset_name, _ = rect_setup
    name = JsonDataset(dataset_name).name
    assert name.startswith('json_')
    spec = inference.portable_dataset_name(name)
    assert spec.startswith('coco_json:') and JsonDataset(spec).name == name
    assert inference.portable_dataset_name('coco_2017_val') == 'coco_2017_val'


@pytest.fixture
def built(monkeypatch):
    """The (args, gpu_id) of every tools' model built (engine.inference.initialize_model_from_cfg,
    replaced by one that records its call and returns the fake model)."""
    calls = []

    def fake_initialize(a, gpu_id=0):
        calls.append((a, gpu_id))
        return _model()
    monkeypatch.setattr(inference, 'initialize_model_from_cfg', fake_initialize)
    return calls


def test_a_child_infers_its_range_with_the_weights_of_the_command_line(rect_setup, tmp_path,
                                                                      built):
    """``--range`` children: the model comes from args' weights (built once, on the CPU without
    CUDA, with the speed options), and only that range of the one dataset is inferred and saved."""
    dataset_name, args = rect_setup
    boxes, segms, _ = inference.run_inference(args, ind_range=(2, 5))
    assert built == [(args, 0)]
    assert all(len(c) == 3 for c in boxes[1:])                 # images 2, 3, 4 only
    saved = test_engine.load_object(os.path.join(args.output_dir, 'detection_range_2_5.pkl'))
    for j in range(1, 4):
        for a, b in zip(saved['all_boxes'][j], boxes[j]):
            np.testing.assert_array_equal(a, b)
    # the same boxes as the whole-dataset pass gives those images
    full = test_engine.test_net(args, dataset_name, None, str(tmp_path / 'full'), model=_model())
    for j in range(1, 4):
        for a, b in zip(full[0][j][2:5], boxes[j]):
            np.testing.assert_array_equal(a, b)
    cfg.TEST.DATASETS = (dataset_name, dataset_name)
    with pytest.raises(ValueError, match='one dataset'):
        inference.run_inference(args, ind_range=(0, 1))


def test_test_net_without_a_model_builds_the_tools_model(rect_setup, tmp_path, built):
    """``core.test_engine.test_net`` called as in earlier versions (no ``model``) builds the
    tools' model from args' weights on ``gpu_id``."""
    dataset_name, args = rect_setup
    got = test_engine.test_net(args, dataset_name, None, str(tmp_path / 'a'), (1, 3), 1)
    want = test_engine.test_net(args, dataset_name, None, str(tmp_path / 'b'), (1, 3),
                                model=_model())
    assert built == [(args, 1)]
    for j in range(1, 4):
        for a, b in zip(got[0][j], want[0][j]):
            np.testing.assert_array_equal(a, b)


def test_model_from_cfg_loads_the_checkpoint_of_the_command_line(tmp_path, fresh_cfg):
    """``--load_ckpt``: the tools' model holds the checkpoint's weights, in eval mode, on the
    CPU with --no_cuda, channels-last with --channels_last."""
    from pydetectron.core.config import (assert_and_infer_cfg, merge_cfg_from_file,
                                         merge_cfg_from_list)
    from pydetectron.modeling.model_builder import Generalized_RCNN
    merge_cfg_from_file(os.path.join(ROOT, 'configs', 'baselines',
                                     'e2e_faster_rcnn_R-50-C4_1x.yaml'))
    merge_cfg_from_list(['MODEL.NUM_CLASSES', 3, 'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False])
    assert_and_infer_cfg(make_immutable=False)
    torch.manual_seed(1)
    source = Generalized_RCNN()
    ckpt = str(tmp_path / 'model_step1.pth')
    torch.save({'model': source.state_dict(), 'step': 1}, ckpt)
    args = SimpleNamespace(load_ckpt=ckpt, load_detectron=None, cuda=False, channels_last=True,
                           compile=None)
    torch.manual_seed(2)
    model = inference.initialize_model_from_cfg(args)
    assert not model.training
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert next(model.parameters()).device.type == 'cpu'
    assert model.Conv_Body.res1.conv1.weight.is_contiguous(memory_format=torch.channels_last)
