"""PASCAL VOC folders as datasets (datasets/voc.py) and the VOC evaluator (voc_eval.py,
voc_dataset_evaluator.py) against hand-computed APs. The VOC folders are built here from coco_mini
images (no download)."""
import glob
import logging
import os
import shutil

import numpy as np
import pytest

from pydetectron.datasets import dataset_catalog as dc
from pydetectron.datasets import voc
from pydetectron.datasets.voc_eval import voc_ap, voc_eval_class

# (index, width, height, [(name, difficult, xmin, ymin, xmax, ymax)]): VOC's 1-based boxes
IMAGES = [
    ('000001', [('dog', 0, 11, 11, 60, 60), ('dog', 1, 100, 100, 150, 150)]),
    ('000002', [('dog', 0, 21, 21, 80, 80)]),
    ('000003', [('cat', 0, 1, 1, 50, 50)]),
]


def write_xml(path, width, height, objects):
    objs = ''.join(
        '<object><name>%s</name><pose>Unspecified</pose><truncated>0</truncated>'
        '<difficult>%d</difficult><bndbox><xmin>%d</xmin><ymin>%d</ymin><xmax>%d</xmax>'
        '<ymax>%d</ymax></bndbox></object>' % o for o in objects)
    with open(path, 'w') as f:
        f.write('<annotation><folder>VOC2007</folder><size><width>%d</width><height>%d</height>'
                '<depth>3</depth></size>%s</annotation>' % (width, height, objs))


def make_voc_folder(root, coco_mini, images=IMAGES, splits=None):
    """A VOC-layout folder whose JPEGImages are coco_mini images; every split lists them all
    unless ``splits`` says otherwise."""
    import cv2
    for sub in ('Annotations', 'ImageSets/Main', 'JPEGImages'):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    sources = sorted(glob.glob(os.path.join(coco_mini, 'images', 'val2017', '*.jpg')))
    for (index, objects), src in zip(images, sources):
        shutil.copy(src, os.path.join(root, 'JPEGImages', index + '.jpg'))
        h, w = cv2.imread(src).shape[:2]
        write_xml(os.path.join(root, 'Annotations', index + '.xml'), w, h, objects)
    splits = splits or {s: [i for i, _ in images] for s in ('trainval', 'test')}
    for split, indices in splits.items():
        with open(os.path.join(root, 'ImageSets', 'Main', split + '.txt'), 'w') as f:
            f.write(''.join(i + '\n' for i in indices))
    return str(root)


@pytest.fixture
def voc_root(tmp_path, coco_mini, fresh_cfg):
    fresh_cfg.CACHE_DIR = str(tmp_path / 'cache')
    return make_voc_folder(str(tmp_path / 'VOC2007'), coco_mini)


# ------------------------------------------------------------------------------------------------
# AP by hand
# ------------------------------------------------------------------------------------------------

def _recs():
    return {index: [{'name': n, 'difficult': d, 'bbox': [x1, y1, x2, y2]}
                    for n, d, x1, y1, x2, y2 in objs] for index, objs in IMAGES}


# dog: 2 positives (the difficult one is not counted). By decreasing score:
#   0.9 on dog 1 exactly             TP          tp 1  fp 0  rec .5  prec 1
#   0.8 on the difficult dog         ignored
#   0.7 in image 2, no overlap       FP          tp 1  fp 1  rec .5  prec 1/2
#   0.6 on dog 1 again               FP (dup.)   tp 1  fp 2  rec .5  prec 1/3
#   0.5 on dog 3 exactly             TP          tp 2  fp 2  rec 1   prec 1/2
# area: recall 0 -> .5 at envelope 1, .5 -> 1 at envelope .5: .5 + .25 = .75
# 11-point: t = 0 ... .5 (6 points) precision 1, t = .6 ... 1 (5 points) .5: 8.5 / 11
DOG_DETS = [('000001', 0.6, [11, 11, 60, 60]), ('000002', 0.7, [200, 200, 220, 220]),
            ('000001', 0.9, [11, 11, 60, 60]), ('000002', 0.5, [21, 21, 80, 80]),
            ('000001', 0.8, [100, 100, 150, 150])]
DOG_AP_AREA = 0.75
DOG_AP_07 = 8.5 / 11


def test_dog_ap_by_hand():
    rec, prec, ap = voc_eval_class(DOG_DETS, _recs(), 'dog', use_07_metric=False)
    np.testing.assert_allclose(rec, [.5, .5, .5, .5, 1.])   # the difficult hit changes nothing
    assert ap == pytest.approx(DOG_AP_AREA, abs=1e-12)
    _, _, ap07 = voc_eval_class(DOG_DETS, _recs(), 'dog', use_07_metric=True)
    assert ap07 == pytest.approx(DOG_AP_07, abs=1e-12)


def test_iou_threshold_is_strict_and_widths_are_plus_one():
    # gt [1,1,50,50] (2500 px); a det [1,1,50,100] (5000 px) has IoU exactly 0.5: a miss
    recs = {'a': [{'name': 'cat', 'difficult': 0, 'bbox': [1, 1, 50, 50]}]}
    assert voc_eval_class([('a', 1.0, [1, 1, 50, 100])], recs, 'cat')[2] == 0.0
    # [1,1,50,99] has 2500 / 4950 > 0.5: a hit
    assert voc_eval_class([('a', 1.0, [1, 1, 50, 99])], recs, 'cat')[2] == 1.0


def test_voc_ap_metrics():
    # one point at recall .35 precision 1, then recall .7 precision .5
    rec, prec = np.array([.35, .7]), np.array([1., .5])
    assert voc_ap(rec, prec) == pytest.approx(.35 * 1 + .35 * .5)
    # 11-point: t = 0, .1, .2, .3 -> 1; .4 ... .7 -> .5 (arange's .7000000000000001 > .7 -> 0)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((4 * 1 + 3 * .5) / 11)


# ------------------------------------------------------------------------------------------------
# The folder as a dataset
# ------------------------------------------------------------------------------------------------

def test_voc_folder_is_a_dataset(voc_root):
    from pydetectron.datasets.json_dataset import JsonDataset
    (name,), num_classes = dc.resolve_dataset_arg('voc:%s:test' % voc_root, training=False)
    assert num_classes == 21 and name.startswith('vocdir_VOC2007_test_')
    assert dc.get_voc_info(name) == (voc_root, 'test', True)   # VOC2007: the 11-point metric
    # what multi-process testing hands its children
    from pydetectron.engine.inference import portable_dataset_name
    assert portable_dataset_name(name) == 'voc:%s:test' % voc_root
    ds = JsonDataset(name)
    assert ds.classes == ['__background__'] + list(voc.VOC_CLASSES)
    roidb = ds.get_roidb(gt=True)
    assert [os.path.basename(e['image']) for e in roidb] == ['000001.jpg', '000002.jpg',
                                                             '000003.jpg']
    # 1-based inclusive VOC boxes -> 0-based; the difficult dog is not a training box
    np.testing.assert_array_equal(roidb[0]['boxes'], [[10, 10, 59, 59]])
    assert roidb[0]['gt_classes'].tolist() == [voc.VOC_CLASSES.index('dog') + 1]
    np.testing.assert_array_equal(roidb[2]['boxes'], [[0, 0, 49, 49]])
    # the default split is trainval; the conversion is cached and reused
    (train_name,), _ = dc.resolve_dataset_arg('voc:' + voc_root)
    assert dc.get_voc_info(train_name)[1] == 'trainval'
    cache = dc.get_ann_fn(name)
    mtime = os.path.getmtime(cache)
    dc.prepare(name)
    assert os.path.getmtime(cache) == mtime


def test_other_classes_and_layout_errors(tmp_path, coco_mini, fresh_cfg):
    fresh_cfg.CACHE_DIR = str(tmp_path / 'cache')
    root = make_voc_folder(str(tmp_path / 'mine'), coco_mini,
                           images=[('a', [('zebra', 0, 1, 1, 9, 9)]),
                                   ('b', [('apple', 0, 1, 1, 9, 9)])])
    (name,), num_classes = dc.resolve_dataset_arg('voc:%s:trainval' % root)
    assert num_classes == 3 and dc.get_voc_info(name)[2] is False  # no year: area metric
    from pydetectron.datasets.json_dataset import JsonDataset
    assert JsonDataset(name).classes == ['__background__', 'apple', 'zebra']
    with pytest.raises(FileNotFoundError, match=r'split file .*nosuch.txt not found \(splits '
                                                r'here: test, trainval\)'):
        dc.resolve_dataset_arg('voc:%s:nosuch' % root)
    with pytest.raises(FileNotFoundError, match='Annotations'):
        dc.resolve_dataset_arg('voc:%s' % tmp_path)


def test_catalog_entry_uses_a_plain_voc_folder(tmp_path, coco_mini, fresh_cfg):
    fresh_cfg.DATA_DIR = str(tmp_path)
    fresh_cfg.CACHE_DIR = str(tmp_path / 'cache')
    make_voc_folder(str(tmp_path / 'VOCdevkit' / 'VOC2007'), coco_mini)
    from pydetectron.datasets.json_dataset import JsonDataset
    ds = JsonDataset('voc_2007_test')
    assert len(ds.get_roidb()) == 3
    assert dc.get_voc_info('voc_2007_test') == (str(tmp_path / 'VOCdevkit' / 'VOC2007'), 'test',
                                                True)


# ------------------------------------------------------------------------------------------------
# The evaluator on a dataset
# ------------------------------------------------------------------------------------------------

def _all_boxes(ds):
    """DOG_DETS and one cat detection in Detectron's [class][image] layout, 0-based boxes."""
    index = {'000001': 0, '000002': 1, '000003': 2}
    all_boxes = [[[] for _ in range(3)] for _ in range(ds.num_classes)]
    per_image = {}
    for im, score, (x1, y1, x2, y2) in DOG_DETS:
        per_image.setdefault(index[im], []).append([x1 - 1, y1 - 1, x2 - 1, y2 - 1, score])
    dog, cat = ds.classes.index('dog'), ds.classes.index('cat')
    for i, rows in per_image.items():
        all_boxes[dog][i] = np.array(rows, dtype=np.float32)
    # IoU 2500 / 3750 with the cat: a hit, AP 1
    all_boxes[cat][2] = np.array([[0, 0, 49, 74, 0.95]], dtype=np.float32)
    return all_boxes


@pytest.mark.parametrize('metric07', [True, False])
def test_evaluator_prints_detectron_lines_and_map(tmp_path, coco_mini, fresh_cfg, caplog,
                                                  metric07):
    from pydetectron.datasets import task_evaluation
    from pydetectron.datasets.json_dataset import JsonDataset
    fresh_cfg.CACHE_DIR = str(tmp_path / 'cache')
    root = make_voc_folder(str(tmp_path / ('VOC2007' if metric07 else 'VOC2012')), coco_mini)
    (name,), _ = dc.resolve_dataset_arg('voc:%s:test' % root, training=False)
    ds = JsonDataset(name)
    out = str(tmp_path / 'out')
    with caplog.at_level(logging.INFO):
        results = task_evaluation.evaluate_boxes(ds, _all_boxes(ds), out)
    dog_ap = DOG_AP_07 if metric07 else DOG_AP_AREA
    expected_map = (dog_ap + 1.0) / 2   # only dog and cat have ground truth
    box = results[name]['box']
    assert box['AP50'] == pytest.approx(expected_map, abs=1e-12)
    assert box['AP50/dog'] == pytest.approx(dog_ap, abs=1e-12)
    assert box['AP50/cat'] == 1.0 and np.isnan(box['AP50/bird'])
    text = caplog.text
    assert 'VOC07 metric? ' + ('Yes' if metric07 else 'No') in text
    assert 'AP for dog = {:.4f}'.format(dog_ap) in text
    assert 'Mean AP = {:.4f}'.format(expected_map) in text
    # the devkit's result file: 1-based boxes, 3-decimal scores
    with open(os.path.join(out, 'comp4_det_test_dog.txt')) as f:
        lines = f.read().splitlines()
    assert '000001 0.900 11.0 11.0 60.0 60.0' in lines and len(lines) == 5


# ------------------------------------------------------------------------------------------------
# From the command line
# ------------------------------------------------------------------------------------------------

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
THIN_CFG = os.path.join(ROOT, 'configs', 'getting_started',
                        'shapes_e2e_mask_rcnn_R-FPN-thin_gn_cpu.yaml')


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')


def test_test_net_prints_the_hand_computed_map(tmp_path, coco_mini, fresh_cfg):
    """test_net.py --eval_only scores hand-made detections of a VOC folder: the printed mAP is
    the hand-computed one."""
    import subprocess
    import sys
    from pydetectron.core.test_engine import save_object
    from pydetectron.datasets.json_dataset import JsonDataset
    fresh_cfg.CACHE_DIR = str(tmp_path / 'cache')
    root = make_voc_folder(str(tmp_path / 'VOC2007'), coco_mini)
    spec = 'voc:%s:test' % root
    ds = JsonDataset(dc.resolve_dataset_arg(spec, training=False)[0][0])
    det_file = str(tmp_path / 'detections.pkl')
    save_object({'all_boxes': _all_boxes(ds), 'all_segms': [[[]] * 3] * ds.num_classes,
                 'all_keyps': [[[]] * 3] * ds.num_classes, 'cfg': ''}, det_file)
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'test_net.py'), '--dataset', spec,
         '--cfg', THIN_CFG, '--eval_only', det_file, '--output_dir', str(tmp_path / 'out'),
         '--set', 'CACHE_DIR', str(tmp_path / 'cache')],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    expected = (DOG_AP_07 + 1.0) / 2
    assert 'Mean AP = {:.4f}'.format(expected) in out.stdout      # 0.8864
    assert 'AP for dog = {:.4f}'.format(DOG_AP_07) in out.stdout  # 0.7727
    assert 'only the boxes are evaluated' in out.stdout           # the config has masks on


@pytest.mark.slow
def test_voc_folder_trains_and_evaluates_from_the_command_line(tmp_path, coco_mini):
    import subprocess
    import sys
    from pydetectron.engine import run_folder
    root = make_voc_folder(str(tmp_path / 'VOC2007'), coco_mini)
    out_dir = tmp_path / 'run'
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'train_net_step.py'),
           '--dataset', 'voc:%s:trainval' % root, '--cfg', THIN_CFG, '--no_cuda', '--bs', '1',
           '--nw', '0', '--disp_interval', '1', '--output_dir', str(out_dir),
           '--set', 'MODEL.MASK_ON', 'False', 'TEST.DATASETS', "('voc:%s:test',)" % root,
           'CACHE_DIR', str(tmp_path / 'cache'), 'SOLVER.MAX_ITER', '1', 'SOLVER.STEPS', '[0]',
           'TRAIN.SCALES', '(64,)', 'TRAIN.MAX_SIZE', '96', 'TEST.SCALE', '64',
           'TEST.MAX_SIZE', '96', 'TRAIN.BATCH_SIZE_PER_IM', '32', 'TRAIN.SNAPSHOT_ITERS', '1000',
           'TEST.DETECTIONS_PER_IM', '10']
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    # trained on the folder (21 classes), then Detectron's test after training with VOC's metric
    assert 'VOC07 metric? Yes' in out.stdout and 'Mean AP = ' in out.stdout
    evals = [r for r in run_folder.read_metrics(str(out_dir)) if r['type'] == 'eval']
    assert [r['iter'] for r in evals] == [2]
    (box,) = [t['box'] for t in evals[0]['results'].values()]
    printed = float(out.stdout.split('Mean AP = ')[1].split()[0])
    assert 'AP50' in box and 'AP50/dog' in box and round(box['AP50'], 4) == printed
    with open(str(out_dir / 'classes.txt')) as f:
        assert f.read().split() == ['__background__'] + list(voc.VOC_CLASSES)
