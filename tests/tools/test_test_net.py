"""tools/test_net.py end to end with a small randomly initialised Mask R-CNN (R-50-FPN) on a
synthetic COCO dataset: the printed numbers are pycocotools' on the written results; several
processes give the detections of one; saved detections are re-evaluated without the model."""
import importlib.util
import os
import pickle
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, 'tools', 'test_net.py')

SMALL_MASK_RCNN = """
MODEL:
  TYPE: generalized_rcnn
  CONV_BODY: FPN.fpn_ResNet50_conv5_body
  NUM_CLASSES: 4
  FASTER_RCNN: True
  MASK_ON: True
FPN:
  FPN_ON: True
  MULTILEVEL_ROIS: True
  MULTILEVEL_RPN: True
FAST_RCNN:
  ROI_BOX_HEAD: fast_rcnn_heads.roi_2mlp_head
  ROI_XFORM_METHOD: RoIAlign
  ROI_XFORM_RESOLUTION: 7
  ROI_XFORM_SAMPLING_RATIO: 2
MRCNN:
  ROI_MASK_HEAD: mask_rcnn_heads.mask_rcnn_fcn_head_v1up
  RESOLUTION: 14
  ROI_XFORM_METHOD: RoIAlign
  ROI_XFORM_RESOLUTION: 7
  ROI_XFORM_SAMPLING_RATIO: 2
TEST:
  SCALE: 120
  MAX_SIZE: 200
  NMS: 0.5
  RPN_PRE_NMS_TOP_N: 200
  RPN_POST_NMS_TOP_N: 30
"""


def _load_helper(name, rel_path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, rel_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A synthetic dataset, a config file and a checkpoint of a randomly initialised model."""
    from pydetectron.core.config import assert_and_infer_cfg, merge_cfg_from_file, reset_cfg
    from pydetectron.modeling.model_builder import Generalized_RCNN
    root = tmp_path_factory.mktemp('test_net')
    engine_tests = _load_helper('_engine_tests', 'tests/core/test_test_engine.py')
    dataset = engine_tests.make_rect_dataset(str(root / 'data'), num_images=5)
    cfg_file = root / 'small_mask_rcnn.yaml'
    cfg_file.write_text(SMALL_MASK_RCNN)
    reset_cfg()
    merge_cfg_from_file(str(cfg_file))
    assert_and_infer_cfg()
    torch.manual_seed(0)
    ckpt = root / 'model.pth'
    model = Generalized_RCNN()
    torch.save({'model': model.state_dict()}, str(ckpt))
    from pydetectron.utils.detectron_weight_helper import save_detectron_weight
    save_detectron_weight(model, str(root / 'model.pkl'))  # the same weights, Detectron's way
    reset_cfg()
    return root, dataset, str(cfg_file), str(ckpt)


def _run(args):
    env = dict(os.environ, OMP_NUM_THREADS='1')  # same arithmetic in every process
    proc = subprocess.run([sys.executable, TOOL] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _printed_results(stdout):
    """{task: {metric: value}} from the 'copypaste:' lines the tool printed."""
    lines = [l.split('copypaste: ', 1)[1] for l in stdout.splitlines() if 'copypaste: ' in l]
    out, task = {}, None
    i = 0
    while i < len(lines):
        if lines[i].startswith('Task: '):
            task = lines[i][len('Task: '):]
            names, vals = lines[i + 1].split(','), lines[i + 2].split(',')
            out[task] = dict(zip(names, map(float, vals)))
            i += 3
        else:
            i += 1
    return out


def _coco_stats(dataset_name, res_file, iou_type):
    from pydetectron.datasets.json_dataset import JsonDataset
    coco = JsonDataset(dataset_name).COCO
    e = COCOeval(coco, coco.loadRes(res_file), iou_type)
    e.evaluate()
    e.accumulate()
    e.summarize()
    return e.stats


def _result_file(out_dir, prefix):
    names = [f for f in os.listdir(out_dir) if f.startswith(prefix) and f.endswith('.json')]
    assert len(names) == 1, names
    return os.path.join(out_dir, names[0])


def _check_printed_equals_pycocotools(out_dir, stdout, dataset):
    printed = _printed_results(stdout)
    assert set(printed) == {'box', 'mask'}
    for task, prefix, iou_type in (('box', 'bbox_', 'bbox'), ('mask', 'segmentations_', 'segm')):
        stats = _coco_stats(dataset, _result_file(out_dir, prefix), iou_type)
        expected = [round(float(stats[i]), 4) for i in range(6)]
        assert list(printed[task].values()) == pytest.approx(expected, abs=1e-4)
    return printed


def test_single_and_multi_process_runs(setup):
    root, dataset, cfg_file, ckpt = setup
    common = ['--dataset', dataset, '--cfg', cfg_file, '--load_ckpt', ckpt, '--no_cuda',
              '--quiet']
    single_dir = str(root / 'single')
    stdout = _run(common + ['--output_dir', single_dir, '--vis', '--set', 'VIS_TH', '0.2'])
    _check_printed_equals_pycocotools(single_dir, stdout, dataset)
    drawn = sorted(os.listdir(os.path.join(single_dir, 'vis')))  # --vis: one PDF per image
    assert drawn and all(re.match(r'\d_im0\d\.pdf$', f) for f in drawn)
    with open(os.path.join(single_dir, 'detections.pkl'), 'rb') as f:
        single = pickle.load(f)
    n_dets = sum(len(b) for c in single['all_boxes'][1:] for b in c)
    assert n_dets > 0  # the random model does detect (scores ~ 1/4 > TEST.SCORE_THRESH)

    multi_dir = str(root / 'multi')
    stdout = _run(common + ['--output_dir', multi_dir, '--multi-gpu-testing', '--nproc', '2'])
    _check_printed_equals_pycocotools(multi_dir, stdout, dataset)
    ranges = sorted(f for f in os.listdir(multi_dir) if re.match(r'detection_range_.*\.pkl$', f))
    assert ranges == ['detection_range_0_3.pkl', 'detection_range_3_5.pkl']
    with open(os.path.join(multi_dir, 'detections.pkl'), 'rb') as f:
        multi = pickle.load(f)
    for j in range(1, 4):
        assert len(multi['all_boxes'][j]) == 5
        for a, b in zip(single['all_boxes'][j], multi['all_boxes'][j]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)
        for a, b in zip(single['all_segms'][j], multi['all_segms'][j]):
            assert [r['counts'] for r in a] == [r['counts'] for r in b]

    # a child's run by hand: the same weights from a Detectron .pkl, images [1, 2)
    range_dir = str(root / 'range')
    _run(['--cfg', cfg_file, '--set', 'TEST.DATASETS', dataset, 'MODEL.NUM_CLASSES', '4',
          '--load_detectron', str(root / 'model.pkl'), '--no_cuda', '--quiet',
          '--range', '1', '2', '--output_dir', range_dir])
    with open(os.path.join(range_dir, 'detection_range_1_2.pkl'), 'rb') as f:
        part = pickle.load(f)
    for j in range(1, 4):
        np.testing.assert_allclose(np.asarray(part['all_boxes'][j][0]),
                                   np.asarray(single['all_boxes'][j][1]), rtol=1e-5, atol=1e-4)


def test_eval_only_reevaluates_saved_detections(setup):
    """Ground truth saved as detections.pkl: the tool, without a model, prints AP 1.000 for boxes
    and masks, and exactly what pycocotools gives on the JSONs it wrote."""
    import pycocotools.mask as mask_util
    from pydetectron.datasets.json_dataset import JsonDataset
    from pydetectron.utils.segms import segm_to_mask
    root, dataset, cfg_file, _ = setup
    ds = JsonDataset(dataset)
    roidb = ds.get_roidb(gt=True)
    all_boxes = [[[] for _ in roidb] for _ in range(4)]
    all_segms = [[[] for _ in roidb] for _ in range(4)]
    for i, e in enumerate(roidb):
        for j in range(1, 4):
            sel = np.where(e['gt_classes'] == j)[0]
            all_boxes[j][i] = np.hstack((e['boxes'][sel], np.ones((len(sel), 1)))).astype(
                np.float32)
            all_segms[j][i] = [mask_util.encode(np.asfortranarray(
                segm_to_mask(e['segms'][k], e['height'], e['width']))) for k in sel]
    out_dir = root / 'eval_only'
    out_dir.mkdir()
    with open(out_dir / 'detections.pkl', 'wb') as f:
        pickle.dump({'all_boxes': all_boxes, 'all_segms': all_segms,
                     'all_keyps': [[[] for _ in roidb] for _ in range(4)], 'cfg': ''}, f, 4)
    stdout = _run(['--dataset', dataset, '--cfg', cfg_file, '--eval_only',
                   '--output_dir', str(out_dir), '--quiet'])
    printed = _check_printed_equals_pycocotools(str(out_dir), stdout, dataset)
    assert printed['box']['AP'] == 1.0 and printed['mask']['AP'] == 1.0

    # the evaluation utility: per-class table and precision-recall plot of those results
    analyze = os.path.join(ROOT, 'tools', 'analyze_results.py')
    for results, iou_type in ((_result_file(str(out_dir), 'bbox_'), 'bbox'),
                              (str(out_dir / 'detections.pkl'), 'segm')):
        proc = subprocess.run([sys.executable, analyze, '--dataset', dataset, '--results',
                               results, '--iou_type', iou_type, '--output_dir',
                               str(out_dir / 'analysis')], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        table = (out_dir / 'analysis' / ('per_class_ap_%s.txt' % iou_type)).read_text()
        rows = {l.split()[0]: [float(v) for v in l.split()[1:]] for l in table.splitlines()[1:]}
        present = {c for c in ('blue', 'green', 'red') if ds.COCO.getAnnIds(
            catIds=[ds.category_to_id_map[c]])}
        assert set(rows) == present | {'mean'}
        assert all(v == [1.0, 1.0, 1.0] for v in rows.values())
        png = str(out_dir / 'analysis' / ('pr_%s.png' % iou_type))
        assert cv2.imread(png) is not None


def test_flags_are_checked(setup):
    root, dataset, cfg_file, ckpt = setup
    proc = subprocess.run([sys.executable, TOOL, '--dataset', dataset, '--cfg', cfg_file,
                           '--output_dir', str(root / 'x')], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and 'give --load_ckpt or --load_detectron' in proc.stderr


@pytest.mark.cuda
def test_on_the_gpu_in_one_and_in_child_processes(setup):
    root, dataset, cfg_file, ckpt = setup
    common = ['--dataset', dataset, '--cfg', cfg_file, '--load_ckpt', ckpt, '--quiet']
    one = str(root / 'gpu_one')
    _check_printed_equals_pycocotools(one, _run(common + ['--output_dir', one]), dataset)
    multi = str(root / 'gpu_multi')
    stdout = _run(common + ['--output_dir', multi, '--multi-gpu-testing'])
    _check_printed_equals_pycocotools(multi, stdout, dataset)
    n = torch.cuda.device_count()
    ranges = [f for f in os.listdir(multi) if re.match(r'detection_range_.*\.pkl$', f)]
    assert len(ranges) == min(n, 5)


def test_cuda_graphs_flag():
    spec = importlib.util.spec_from_file_location('test_net_tool', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.parse_args(['--cfg', 'x.yaml']).cuda_graphs is True
    assert tool.parse_args(['--cfg', 'x.yaml', '--no-cuda_graphs']).cuda_graphs is False
    assert tool.parse_args(['--cfg', 'x.yaml']).front_graphs is False
    assert tool.parse_args(['--cfg', 'x.yaml', '--front_graphs']).front_graphs is True
    from pydetectron.utils.errors import CliError
    with pytest.raises(CliError, match='--cuda_graphs/--no-cuda_graphs'):
        tool.parse_args(['--cfg', 'x.yaml', '--cuda_graphs=3'])
