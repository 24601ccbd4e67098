"""Issue 9, item 1 (dataset): each kind of bad record gives a clear error or a counted skip with
a warning naming it -- never a crash deep in the minibatch code or a kernel. One tiny COCO json
per case, written here; the real images of a training run are checked by the loader."""
import json
import logging

import cv2
import numpy as np
import pytest

from pydetectron.datasets import roidb as roidb_utils
from pydetectron.datasets.json_dataset import JsonDataset
from pydetectron.roi_data.minibatch import ImageLoadError, load_image

CATS = [{'id': 2, 'name': 'a'}, {'id': 5, 'name': 'b'}]
SQUARE = [5, 5, 15, 5, 15, 15, 5, 15]


def _ann(ann_id, **kw):
    a = {'id': ann_id, 'image_id': 1, 'category_id': 2, 'bbox': [5, 5, 11, 11], 'area': 100,
         'iscrowd': 0, 'segmentation': [SQUARE]}
    a.update(kw)
    return a


def _dataset(tmp_path, anns, images=None, categories=CATS, write_images=True):
    im_dir = tmp_path / 'images'
    im_dir.mkdir(exist_ok=True)
    images = images or [{'id': 1, 'file_name': 'a.jpg', 'width': 40, 'height': 30}]
    if write_images:
        for im in images:
            cv2.imwrite(str(im_dir / im['file_name']),
                        np.zeros((im['height'], im['width'], 3), np.uint8))
    ann_fn = tmp_path / 'ann.json'
    ann_fn.write_text(json.dumps({'images': images, 'annotations': anns,
                                  'categories': categories}))
    return JsonDataset('coco_json:%s:%s' % (ann_fn, im_dir))


def _roidb(ds, caplog):
    with caplog.at_level(logging.INFO):
        return ds.get_roidb()


# -- annotations that are skipped with a warning naming them --------------------------------- #

@pytest.mark.parametrize('bad,why,expected', [
    # negative sizes are integrity skips (datasets/coco_integrity.py), named when the JSON loads
    (dict(bbox=[5, 5, -3, 4]), 'negative width',
     'annotation 2 (image 1): bbox [5, 5, -3, 4] is not 4 finite numbers >= 0; skipped'),
    (dict(bbox=[5, 5, 4, -3]), 'negative height',
     'annotation 2 (image 1): bbox [5, 5, 4, -3] is not 4 finite numbers >= 0; skipped'),
    # a box that clipping empties is dropped as Detectron drops it
    (dict(bbox=[100, 80, 10, 10]), 'box outside the image',
     'dropped 1 annotations with an empty box'),
])
def test_bad_boxes_are_dropped_and_counted(tmp_path, fresh_cfg, caplog, bad, why, expected):
    with caplog.at_level(logging.INFO):
        ds = _dataset(tmp_path, [_ann(1), _ann(2, **bad)])
    (entry,) = _roidb(ds, caplog)
    assert len(entry['boxes']) == 1, why            # only the good annotation is left
    np.testing.assert_allclose(entry['boxes'], [[5, 5, 15, 15]])
    assert expected in caplog.text, why


@pytest.mark.parametrize('segm,why', [
    ([[0, 0, 1, 1, 2, 2]], 'zero-area polygon'),
    ([[1, 1, 2, 2]], 'polygon with fewer than 3 points'),
])
def test_degenerate_polygons_are_dropped_with_the_annotation_id(tmp_path, fresh_cfg, caplog,
                                                                 segm, why):
    ds = _dataset(tmp_path, [_ann(1), _ann(42, segmentation=segm)])
    (entry,) = _roidb(ds, caplog)
    assert len(entry['boxes']) == 1, why
    assert 'annotation 42' in caplog.text, why
    assert 'dropped 1 degenerate polygons' in caplog.text


def test_unknown_category_id_is_dropped_with_annotation_image_and_field(tmp_path, fresh_cfg,
                                                                         caplog):
    with caplog.at_level(logging.INFO):
        ds = _dataset(tmp_path, [_ann(1), _ann(7, category_id=99)])
    (entry,) = _roidb(ds, caplog)
    np.testing.assert_array_equal(entry['gt_classes'], [1])
    assert 'annotation 7 (image 1): category_id 99 is not one of' in caplog.text
    assert 'skipped 1 of 2 annotations and 0 of 1 images (1 category_id not in categories)' \
        in caplog.text


def test_keypoints_of_the_wrong_length_name_the_annotation(tmp_path, fresh_cfg, caplog):
    cats = [{'id': 1, 'name': 'person', 'keypoints': ['nose', 'left_eye', 'right_eye'],
             'skeleton': []}]
    ds = _dataset(tmp_path, [_ann(3, category_id=1, keypoints=[1, 1, 2] * 3, num_keypoints=3),
                             _ann(4, category_id=1, keypoints=[1, 1, 2] * 2, num_keypoints=2)],
                  categories=cats)
    with pytest.raises(ValueError) as e:
        _roidb(ds, caplog)
    msg = str(e.value)
    assert "annotation 4 (image 1): field 'keypoints' has 6 values, expected 3 x 3" in msg


# -- images without usable ground truth: kept in the roidb, skipped (counted) for training ---- #

def test_empty_and_crowd_only_images_are_filtered_for_training(tmp_path, fresh_cfg, caplog):
    images = [{'id': i, 'file_name': '%d.jpg' % i, 'width': 40, 'height': 30} for i in (1, 2, 3)]
    anns = [_ann(1, image_id=1),                                   # a normal image
            _ann(2, image_id=2, iscrowd=1)]                        # image 2: crowd only
    ds = _dataset(tmp_path, anns, images=images)                   # image 3: no annotations
    roidb = _roidb(ds, caplog)
    assert [len(e['boxes']) for e in roidb] == [1, 1, 0]
    with caplog.at_level(logging.INFO):
        kept = roidb_utils.filter_for_training(roidb)
    assert [e['id'] for e in kept] == [1]
    assert 'Filtered 2 roidb entries: 3 -> 1' in caplog.text


def test_missing_image_file_is_counted_and_skipped_for_training(tmp_path, fresh_cfg, caplog):
    images = [{'id': 1, 'file_name': 'a.jpg', 'width': 40, 'height': 30},
              {'id': 2, 'file_name': 'gone.jpg', 'width': 40, 'height': 30}]
    ds = _dataset(tmp_path, [_ann(1), _ann(2, image_id=2)], images=images[:1])
    (tmp_path / 'ann.json').write_text(json.dumps({'images': images, 'categories': CATS,
                                                   'annotations': [_ann(1), _ann(2, image_id=2)]}))
    ds = JsonDataset('coco_json:%s:%s' % (tmp_path / 'ann.json', tmp_path / 'images'))
    roidb = _roidb(ds, caplog)
    assert '1 of 2 image files are missing' in caplog.text and 'gone.jpg' in caplog.text
    with caplog.at_level(logging.INFO):
        kept = roidb_utils.filter_for_training(roidb)
    assert [e['id'] for e in kept] == [1] and 'Skipping 1 roidb images' in caplog.text


# -- image files that cannot be used: an error naming the image id (the training loader --------
# -- replaces them with a counted warning, tests/roi_data/test_loader.py) -------------------- #

@pytest.mark.parametrize('kind', ['truncated', 'not an image', 'other size'])
def test_unusable_image_file_names_the_image_id(tmp_path, fresh_cfg, caplog, kind):
    ds = _dataset(tmp_path, [_ann(1)], images=[{'id': 77, 'file_name': 'x.jpg', 'width': 40,
                                                 'height': 30}], write_images=False)
    path = tmp_path / 'images' / 'x.jpg'
    if kind == 'truncated':
        ok, buf = cv2.imencode('.jpg', np.full((30, 40, 3), 128, np.uint8))
        path.write_bytes(buf.tobytes()[:40])
    elif kind == 'not an image':
        path.write_text('hello, I am a text file')
    else:
        cv2.imwrite(str(path), np.zeros((31, 40, 3), np.uint8))
    (entry,) = _roidb(ds, caplog)
    with pytest.raises(ImageLoadError) as e:
        load_image(entry)
    assert 'image id 77' in str(e.value) and 'x.jpg' in str(e.value)


# -- JSON that is not COCO: an error naming the file and what was expected ------------------- #

@pytest.mark.parametrize('content,expected', [
    ('[1, 2, 3]', 'expected a JSON object with images/annotations/categories'),
    ('{"info": {}, "licenses": []}', "missing the required top-level field"),
    ('{"images": [{"file_name": "a.jpg"}], "categories": []}', "missing the required field 'id'"),
    ('not json at all', 'is not valid JSON'),
])
def test_json_that_is_not_coco(tmp_path, content, expected):
    (tmp_path / 'images').mkdir()
    (tmp_path / 'ann.json').write_text(content)
    with pytest.raises(ValueError) as e:
        JsonDataset('coco_json:%s:%s' % (tmp_path / 'ann.json', tmp_path / 'images'))
    assert expected in str(e.value) and 'ann.json' in str(e.value)
