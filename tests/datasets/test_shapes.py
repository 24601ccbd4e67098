"""datasets.shapes: deterministic generation, valid COCO annotations, regeneration rules."""
import filecmp
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest

from pydetectron.datasets import dataset_catalog as dc
from pydetectron.datasets import shapes
from pydetectron.datasets.json_dataset import JsonDataset
from pydetectron.utils import segms as segm_utils


@pytest.fixture
def small_splits(monkeypatch):
    monkeypatch.setattr(shapes, 'SPLITS', {
        'shapes_train': (24, 1, False), 'shapes_val': (6, 2, False),
        'keypoints_shapes_train': (24, 3, True), 'keypoints_shapes_val': (6, 4, True)})


def test_generation_is_deterministic(tmp_path):
    a = shapes.generate(str(tmp_path / 'a'), 8, seed=5, keypoints=True)
    b = shapes.generate(str(tmp_path / 'b'), 8, seed=5, keypoints=True)
    c = shapes.generate(str(tmp_path / 'c'), 8, seed=6, keypoints=True)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    names = sorted(os.listdir(str(tmp_path / 'a')))
    assert len(names) == 8
    match, mismatch, errors = filecmp.cmpfiles(str(tmp_path / 'a'), str(tmp_path / 'b'), names,
                                               shallow=False)
    assert match == names
    assert json.dumps(a, sort_keys=True) != json.dumps(c, sort_keys=True)
    # an image does not depend on how many come before it
    d = shapes.generate(str(tmp_path / 'd'), 3, seed=5, keypoints=True)
    assert d['images'] == a['images'][:3]


def test_annotations_describe_the_pixels(tmp_path):
    data = shapes.generate(str(tmp_path / 'im'), 40, seed=11, keypoints=False)
    assert [c['name'] for c in data['categories']] == ['circle', 'square', 'triangle']
    sizes = [(im['width'], im['height']) for im in data['images']]
    assert all(128 <= w <= 256 and 128 <= h <= 256 for w, h in sizes)
    assert any(w < h for w, h in sizes) and any(w > h for w, h in sizes)
    per_image = {}
    for a in data['annotations']:
        per_image.setdefault(a['image_id'], []).append(a)
    assert all(2 <= len(v) <= 7 for v in per_image.values())
    crowds = [a for a in data['annotations'] if a['iscrowd']]
    assert crowds and all(isinstance(a['segmentation']['counts'], list) for a in crowds)
    occluded = 0
    for a in data['annotations']:
        im = data['images'][a['image_id'] - 1]
        h, w = im['height'], im['width']
        if a['iscrowd']:
            mask = mask_util.decode(mask_util.frPyObjects(a['segmentation'], h, w))
            assert mask.sum() == a['area']
        else:
            assert all(segm_utils.is_valid_polygon(p) for p in a['segmentation'])
            mask = segm_utils.segm_to_mask(a['segmentation'], h, w)
            # polygons of occluded objects trace pixel centres: a little smaller than the area
            assert 0.75 * a['area'] <= mask.sum() <= 1.05 * a['area'] + 5
            # unoccluded shapes keep their exact outline: 32-gon circle, square, triangle
            occluded += len(a['segmentation']) > 1 or len(a['segmentation'][0]) not in (64, 8, 6)
        x, y, bw, bh = a['bbox']
        ys, xs = np.where(mask)
        assert x <= xs.min() + 1 and xs.max() <= x + bw and y <= ys.min() + 1 and ys.max() <= y + bh
    assert occluded > 0


def test_keypoint_triangles(tmp_path):
    data = shapes.generate(str(tmp_path / 'im'), 20, seed=3, keypoints=True)
    (cat,) = data['categories']
    assert cat['keypoints'] == ['top', 'left', 'right']
    labeled = [a for a in data['annotations'] if not a['iscrowd']]
    assert labeled
    for a in labeled:
        (top, left, right) = np.asarray(a['keypoints']).reshape(3, 3)
        assert top[1] < left[1] and top[1] < right[1] and left[0] < right[0]
        assert set(np.asarray(a['keypoints'])[2::3]) <= {1, 2}
        x, y, w, h = a['bbox']
        if all(k[2] == 2 for k in (top, left, right)):  # fully visible: vertices on the box
            assert x <= left[0] <= x + w and y <= top[1] <= y + h


def test_ensure_dataset_generates_once_and_on_version_change(tmp_path, small_splits,
                                                            monkeypatch, fresh_cfg):
    fresh_cfg.DATA_DIR = str(tmp_path)
    assert dc.prepare('shapes_val') == 'shapes_val'
    ann_fn = dc.get_ann_fn('shapes_val')
    assert ann_fn == str(tmp_path / 'shapes' / 'annotations' / 'shapes_val.json')
    first = os.stat(ann_fn).st_mtime_ns
    dc.prepare('shapes_val')
    assert os.stat(ann_fn).st_mtime_ns == first          # up to date: untouched
    monkeypatch.setattr(shapes, 'GENERATOR_VERSION', shapes.GENERATOR_VERSION + 1)
    dc.prepare('shapes_val')
    assert os.stat(ann_fn).st_mtime_ns != first          # new generator: regenerated
    os.remove(os.path.join(dc.get_im_dir('shapes_val'), '000001.jpg'))
    os.remove(ann_fn)
    dc.prepare('shapes_val')                             # missing files: regenerated
    assert os.path.isfile(os.path.join(dc.get_im_dir('shapes_val'), '000001.jpg'))


def test_shapes_datasets_load_as_json_datasets(tmp_path, small_splits, fresh_cfg):
    fresh_cfg.DATA_DIR = str(tmp_path)
    ds = JsonDataset('shapes_train')
    assert ds.classes == ['__background__', 'circle', 'square', 'triangle']
    assert len(ds.get_roidb()) == 24
    kp = JsonDataset('keypoints_shapes_val')
    assert kp.keypoints == ['top', 'left', 'right'] and kp.keypoint_flip_map == {'left': 'right'}
    assert any(e['has_visible_keypoints'] for e in kp.get_roidb())
    assert dc.resolve_dataset_arg('shapes') == (('shapes_train',), 4)
    assert dc.resolve_dataset_arg('keypoints_shapes', training=False) == (
        ('keypoints_shapes_val',), 2)
