"""Issue 16, item 2: a COCO-format JSON is checked once when it loads
(``datasets/coco_integrity.py``). Problems that make other records ambiguous are errors naming
the file and the records; problems confined to one annotation or image are named, counted skips,
and the roidb holds exactly the rest. One tiny JSON per case, written here."""
import json
import logging
import math

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from pydetectron.datasets import coco_integrity
from pydetectron.datasets.json_dataset import JsonDataset
from pydetectron.utils.errors import DatasetError, UserInputError

CATS = [{'id': 2, 'name': 'a'}, {'id': 5, 'name': 'b'}]
KP_CATS = [{'id': 1, 'name': 'person', 'keypoints': ['nose', 'left_eye', 'right_eye'],
            'skeleton': []}]
SQUARE = [5, 5, 15, 5, 15, 15, 5, 15]
W, H = 40, 30


def _ann(ann_id, image_id=1, **kw):
    a = {'id': ann_id, 'image_id': image_id, 'category_id': 2, 'bbox': [5, 5, 11, 11],
         'area': 100, 'iscrowd': 0, 'segmentation': [SQUARE]}
    a.update(kw)
    return a


def _images(n=2):
    return [{'id': i, 'file_name': '%d.jpg' % i, 'width': W, 'height': H}
            for i in range(1, n + 1)]


def _write(tmp_path, data, write_images=True, sizes=None):
    im_dir = tmp_path / 'images'
    im_dir.mkdir(exist_ok=True)
    if write_images:
        for im in data.get('images', []):
            if isinstance(im, dict) and 'file_name' in im:
                h, w = (sizes or {}).get(im['id'], (H, W))
                cv2.imwrite(str(im_dir / im['file_name']), np.full((h, w, 3), 90, np.uint8))
    ann_fn = tmp_path / 'ann.json'
    # allow_nan: Python's json reads NaN / Infinity, so a file can hold them
    ann_fn.write_text(json.dumps(data, allow_nan=True))
    return 'coco_json:%s:%s' % (ann_fn, im_dir)


def _load(tmp_path, caplog, data, **kw):
    spec = _write(tmp_path, data, **{k: v for k, v in kw.items()
                                      if k in ('write_images', 'sizes')})
    with caplog.at_level(logging.INFO):
        ds = JsonDataset(spec, check_images=kw.get('check_images', 'sample'))
        roidb = ds.get_roidb()
    return ds, roidb


# -- errors: the file is not COCO, or its ids are ambiguous ------------------------------------ #

@pytest.mark.parametrize('mutate,expected', [
    (lambda d: d.update(images={'id': 1}), "the top-level field 'images' is a dict, expected a "
                                           "list"),
    (lambda d: d.update(annotations='none'), "the top-level field 'annotations' is a str"),
    (lambda d: d['images'].append(7), 'images[2] is a int, expected a JSON object'),
    (lambda d: d['images'].append(dict(d['images'][0])), '1 duplicate image ids (e.g. 1)'),
    (lambda d: d['annotations'].append(_ann(1, image_id=2)), '1 duplicate annotation ids'),
    (lambda d: d['categories'].append({'id': 2, 'name': 'c'}), '1 duplicate category ids'),
    (lambda d: d['categories'].append({'id': 9, 'name': 'a'}), "1 duplicate category names "
                                                               "(e.g. 'a')"),
    (lambda d: d['images'][0].update(id='1'), "images[0] has the id '1'; expected an integer"),
    (lambda d: d['annotations'][0].update(id=1.5), 'annotations[0] has the id 1.5'),
    (lambda d: d['categories'][0].update(name=''), "category 2 has the name ''"),
    (lambda d: d['annotations'][0].pop('bbox'), "missing the required field 'bbox'"),
])
def test_errors_name_the_file_and_the_records(tmp_path, caplog, mutate, expected):
    data = {'images': _images(), 'annotations': [_ann(1), _ann(2, image_id=2)],
            'categories': [dict(c) for c in CATS]}
    mutate(data)
    with pytest.raises(DatasetError) as e:
        _load(tmp_path, caplog, data)
    assert expected in str(e.value) and 'ann.json' in str(e.value), str(e.value)
    assert isinstance(e.value, UserInputError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize('cut', [0.5, 0.99])
def test_truncated_json_names_the_file(tmp_path, cut):
    data = {'images': _images(), 'annotations': [_ann(1)], 'categories': CATS}
    spec = _write(tmp_path, data)
    text = (tmp_path / 'ann.json').read_text()
    (tmp_path / 'ann.json').write_text(text[:int(len(text) * cut)])
    with pytest.raises(DatasetError, match=r'ann.json is not valid JSON \(truncated\?\)'):
        JsonDataset(spec)
    # the catalog reads the class count first: the same error, not a json traceback
    from pydetectron.datasets import dataset_catalog
    with pytest.raises(DatasetError, match='ann.json is not valid JSON'):
        dataset_catalog.resolve_dataset_arg(spec)


def test_empty_and_binary_json(tmp_path):
    spec = _write(tmp_path, {'images': [], 'categories': []})
    (tmp_path / 'ann.json').write_bytes(b'')
    with pytest.raises(DatasetError, match='ann.json is empty'):
        JsonDataset(spec)
    (tmp_path / 'ann.json').write_bytes(b'\xff\xfe\x00garbage')
    with pytest.raises(DatasetError, match='not valid JSON'):
        JsonDataset(spec)


# -- skips: confined to one annotation or image; the rest is exactly what it would be --------- #

NAN, INF = float('nan'), float('inf')


@pytest.mark.parametrize('bad,kind,why', [
    (dict(image_id=99), 'missing_image', 'image_id 99 is not one of the images'),
    (dict(category_id=77), 'missing_category', "category_id 77 is not one of the dataset's"),
    (dict(bbox=[5, 5, NAN, 11]), 'bad_bbox', 'bbox [5, 5, nan, 11] is not 4 finite numbers'),
    (dict(bbox=[5, 5, INF, 11]), 'bad_bbox', 'is not 4 finite numbers'),
    (dict(bbox=[-2, 5, 11, 11]), 'bad_bbox', 'is not 4 finite numbers >= 0'),
    (dict(bbox=[5, 5, 11]), 'bad_bbox', 'is not 4 finite numbers'),
    (dict(bbox=[5, 5, '11', 11]), 'bad_bbox', 'is not 4 finite numbers'),
    (dict(area=NAN), 'bad_area', 'area nan is not a finite number >= 0'),
    (dict(area=-4), 'bad_area', 'area -4 is not a finite number >= 0'),
    (dict(segmentation=[[5, 5, 15, NAN, 15, 15]]), 'bad_polygon', 'a polygon has non-finite'),
    (dict(segmentation=[SQUARE, [5, -1, 15, 5, 15, 15]]), 'bad_polygon', 'negative'),
    (dict(segmentation={'size': [H + 1, W], 'counts': [0, (H + 1) * W]}, iscrowd=1),
     'bad_rle', 'RLE size 31x40 (h x w) but the image is 30x40'),
    (dict(segmentation={'size': [H, W], 'counts': [0, H * W - 5]}, iscrowd=1),
     'bad_rle', 'RLE counts add up to 1195, not height x width = 1200'),
    (dict(segmentation={'size': [H, W], 'counts': [0, -5, H * W + 5]}, iscrowd=1),
     'bad_rle', 'RLE counts are not non-negative integers'),
    (dict(iscrowd=2), 'bad_iscrowd', 'iscrowd 2 is not 0 or 1'),
])
def test_bad_annotations_are_named_counted_and_skipped(tmp_path, caplog, bad, kind, why):
    data = {'images': _images(), 'categories': CATS,
            'annotations': [_ann(1), _ann(2, image_id=2), _ann(3, **bad)]}
    ds, roidb = _load(tmp_path, caplog, data)
    report = ds.integrity
    assert [a for a, _, _ in report.skips[kind]] == [3]
    assert report.num_skipped == 1
    named = [l for l in caplog.text.splitlines()
             if 'annotation 3 (image %s): ' % bad.get('image_id', 1) in l]
    assert len(named) == 1 and why in named[0] and named[0].endswith('; skipped'), caplog.text
    assert 'skipped 1 of 3 annotations and 0 of 2 images (1 %s)' \
        % coco_integrity.SKIP_KINDS[kind] in caplog.text
    # the rest is exactly the good annotations
    assert [len(e['boxes']) for e in roidb] == [1, 1]
    assert sorted(ds.COCO.anns) == [1, 2]


def test_rle_of_the_right_size_is_kept(tmp_path, caplog):
    mask = np.zeros((H, W), np.uint8, order='F')
    mask[5:16, 5:16] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    rle['counts'] = rle['counts'].decode('ascii')
    data = {'images': _images(1), 'categories': CATS,
            'annotations': [_ann(1, segmentation=rle, iscrowd=1, area=121)]}
    ds, roidb = _load(tmp_path, caplog, data)
    assert ds.integrity.num_skipped == 0 and roidb[0]['is_crowd'].tolist() == [True]


@pytest.mark.parametrize('kps,why', [
    ([1, 1, 2, 2, 2, 3, 3, 3, 1], 'keypoint visibilities [3] are not in {0, 1, 2}'),
    ([1, 1, 2, 2, 2, 0.5, 3, 3, 1], 'keypoint visibilities [0.5] are not in {0, 1, 2}'),
    ([1, 1, 2, 2, 2, -1, 3, 3, 1], 'keypoints are not finite numbers >= 0'),
    ([1, NAN, 2, 2, 2, 1, 3, 3, 1], 'keypoints are not finite numbers >= 0'),
    ([1, 1, 2, -4, 2, 1, 3, 3, 1], 'keypoints are not finite numbers >= 0'),
])
def test_bad_keypoints_are_skipped(tmp_path, caplog, kps, why):
    good = [6, 6, 2, 8, 8, 1, 0, 0, 0]
    data = {'images': _images(1), 'categories': KP_CATS,
            'annotations': [_ann(1, category_id=1, keypoints=good, num_keypoints=2),
                            _ann(2, category_id=1, keypoints=kps, num_keypoints=3)]}
    ds, roidb = _load(tmp_path, caplog, data)
    assert 'annotation 2 (image 1): %s' % why in caplog.text, caplog.text
    assert [a for a, _, _ in ds.integrity.skips['bad_keypoints']] == [2]
    np.testing.assert_array_equal(roidb[0]['gt_keypoints'][0],
                                  np.array(good).reshape(-1, 3).T)


@pytest.mark.parametrize('bad', [dict(width=0), dict(height=-3), dict(width=40.5),
                                 dict(height='30')])
def test_image_with_bad_size_goes_with_its_annotations(tmp_path, caplog, bad):
    images = _images()
    images[1].update(bad)
    data = {'images': images, 'categories': CATS,
            'annotations': [_ann(1), _ann(2, image_id=2), _ann(3, image_id=2)]}
    ds, roidb = _load(tmp_path, caplog, data, write_images=False)
    assert [e['id'] for e in roidb] == [1]
    assert 'image 2: width' in caplog.text
    assert 'skipped 0 of 3 annotations and 1 of 2 images' in caplog.text


def test_image_file_of_another_size_is_found_by_the_sample(tmp_path, caplog):
    data = {'images': _images(3), 'categories': CATS,
            'annotations': [_ann(1), _ann(2, image_id=2), _ann(3, image_id=3)]}
    ds, roidb = _load(tmp_path, caplog, data, sizes={2: (H, W + 7)})
    assert [e['id'] for e in roidb] == [1, 3]
    assert "image 2: the file" in caplog.text and 'is 47x30 (w x h) but the JSON says 40x30' \
        in caplog.text
    assert ds.integrity.images_checked == 3


def test_sample_and_all(tmp_path, caplog):
    """The sample is spread over the dataset; ``'all'`` also decodes every file, so a
    truncated one is found (its header alone looks fine)."""
    n = 9
    data = {'images': _images(n), 'categories': CATS,
            'annotations': [_ann(i, image_id=i) for i in range(1, n + 1)]}
    spec = _write(tmp_path, data)
    path = tmp_path / 'images' / '5.jpg'
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) - 40])
    ds = JsonDataset(spec, check_images=3)
    assert ds.integrity.images_checked == 3 and ds.integrity.num_skipped == 0
    ds = JsonDataset(spec, check_images='sample')       # 32 >= 9: every header
    assert ds.integrity.images_checked == n and ds.integrity.num_skipped == 0
    ds = JsonDataset(spec, check_images='all')
    assert [i for _, i, _ in ds.integrity.skips['image_file_unreadable']] == [5]
    assert sorted(ds.COCO.imgs) == [1, 2, 3, 4, 6, 7, 8, 9]
    ds = JsonDataset(spec, check_images='none')
    assert ds.integrity.images_checked == 0


def test_only_the_first_of_many_are_named(tmp_path, caplog):
    anns = [_ann(1)] + [_ann(i, bbox=[1, 1, -1, 1]) for i in range(2, 40)]
    data = {'images': _images(1), 'categories': CATS, 'annotations': anns}
    ds, _ = _load(tmp_path, caplog, data)
    named = [l for l in caplog.text.splitlines() if 'bbox [1, 1, -1, 1]' in l]
    assert len(named) == coco_integrity.MAX_NAMED
    assert '... and %d more: bbox not 4 finite numbers >= 0' % (38 - coco_integrity.MAX_NAMED) \
        in caplog.text
    assert 'skipped 38 of 39 annotations' in caplog.text


def test_clean_real_coco_has_no_problems(caplog):
    """COCO's own files pass untouched (the check has no false alarms on real data)."""
    import os
    from conftest import ROOT
    base = os.path.join(ROOT, '..', 'shared', 'data', 'coco_mini')
    for name, split in (('instances_val2017', 'val2017'),
                        ('person_keypoints_val2017', 'val2017')):
        ann_fn = os.path.join(base, 'annotations', name + '.json')
        with open(ann_fn) as f:
            data = json.load(f)
        n = len(data['annotations'])
        report = coco_integrity.check_coco_dataset(
            data, ann_fn, os.path.join(base, 'images', split), check_images='all')
        assert report.num_skipped == 0 and len(data['annotations']) == n
        assert report.images_checked == len(data['images'])
        assert not math.isnan(report.num_annotations)
