"""datasets.json_dataset: roidb entries checked against the COCO JSON, bad data, proposals."""
import json
import logging
import os
import pickle

import numpy as np
import pycocotools.mask as mask_util
import pytest

from pydetectron.datasets.json_dataset import JsonDataset
from pydetectron.utils import keypoints as keypoint_utils


def _coco_mini_dataset(coco_mini, ann='instances_train2017.json', split='train2017'):
    spec = 'coco_json:%s:%s' % (os.path.join(coco_mini, 'annotations', ann),
                                os.path.join(coco_mini, 'images', split))
    return JsonDataset(spec)


def test_roidb_entries_match_the_json(coco_mini, fresh_cfg):
    ds = _coco_mini_dataset(coco_mini)
    with open(os.path.join(coco_mini, 'annotations', 'instances_train2017.json')) as f:
        data = json.load(f)
    cat_ids = sorted(c['id'] for c in data['categories'])
    assert ds.num_classes == 81 and ds.classes[0] == '__background__'
    assert [ds.json_category_id_to_contiguous_id[c] for c in cat_ids] == list(range(1, 81))
    assert ds.contiguous_category_id_to_json_id[1] == cat_ids[0]
    names = {c['id']: c['name'] for c in data['categories']}
    assert ds.classes[5] == names[cat_ids[4]]

    roidb = ds.get_roidb(gt=True)
    assert [e['id'] for e in roidb] == sorted(im['id'] for im in data['images'])
    anns_by_image = {}
    for a in data['annotations']:
        anns_by_image.setdefault(a['image_id'], []).append(a)
    num_crowd = 0
    for entry in roidb:
        anns = anns_by_image.get(entry['id'], [])
        assert os.path.isfile(entry['image']) and entry['flipped'] is False
        # coco_mini has no invalid boxes: every annotation appears, in JSON order
        assert len(entry['boxes']) == len(anns) == len(entry['segms'])
        assert entry['boxes'].dtype == np.float32 and entry['gt_classes'].dtype == np.int32
        for i, a in enumerate(anns):
            x, y, w, h = a['bbox']
            expected = np.clip([x, y, x + max(w - 1, 0), y + max(h - 1, 0)], 0,
                               [entry['width'] - 1, entry['height'] - 1] * 2)
            np.testing.assert_allclose(entry['boxes'][i], expected, rtol=0, atol=1e-3)
            cls = entry['gt_classes'][i]
            assert ds.contiguous_category_id_to_json_id[cls] == a['category_id']
            assert entry['seg_areas'][i] == pytest.approx(a['area'], rel=1e-6)
            overlaps = entry['gt_overlaps'].toarray()[i]
            if a['iscrowd']:
                num_crowd += 1
                # crowds: RLE kept as is, overlap -1 with every class, never sampled
                assert entry['is_crowd'][i] and isinstance(entry['segms'][i], dict)
                assert (overlaps == -1).all()
                assert entry['max_overlaps'][i] == -1 and entry['max_classes'][i] == 0
                assert entry['segms'][i] == a['segmentation']
                assert isinstance(a['segmentation']['counts'], list)  # uncompressed RLE
            else:
                assert not entry['is_crowd'][i]
                assert entry['segms'][i] == a['segmentation']
                assert overlaps[cls] == 1 and overlaps.sum() == 1
                assert entry['max_overlaps'][i] == 1 and entry['max_classes'][i] == cls
        np.testing.assert_array_equal(entry['box_to_gt_ind_map'], np.arange(len(anns)))
        assert 'gt_keypoints' not in entry
    assert num_crowd == sum(a['iscrowd'] for a in data['annotations']) > 0


def test_keypoints_from_the_json(coco_mini, fresh_cfg):
    ds = _coco_mini_dataset(coco_mini, 'person_keypoints_val2017.json', 'val2017')
    names, flip_map = keypoint_utils.get_keypoints()
    assert ds.keypoints == names and ds.num_keypoints == 17
    # derived from the names in the categories: Detectron's hard-coded COCO map
    assert ds.keypoint_flip_map == flip_map and len(flip_map) == 8
    with open(ds.annotation_file) as f:
        data = json.load(f)
    by_id = {a['id']: a for a in data['annotations']}
    roidb = ds.get_roidb()
    seen = 0
    for entry in roidb:
        assert entry['gt_keypoints'].shape == (len(entry['boxes']), 3, 17)
        assert entry['gt_keypoints'].dtype == np.int32
        ann_ids = [a['id'] for a in ds.COCO.imgToAnns.get(entry['id'], [])]
        for i, ann_id in enumerate(ann_ids):
            kps = np.asarray(by_id[ann_id]['keypoints']).reshape(-1, 3).T
            np.testing.assert_array_equal(entry['gt_keypoints'][i], kps)
            seen += 1
        assert entry['has_visible_keypoints'] == bool((entry['gt_keypoints'][:, 2] > 0).any())
    assert seen == len(data['annotations'])
    assert any(e['has_visible_keypoints'] for e in roidb)


def _write_dataset(tmp_path, anns, images=None, categories=None):
    im_dir = tmp_path / 'images'
    im_dir.mkdir(exist_ok=True)
    import cv2
    images = images or [{'id': 1, 'file_name': 'a.jpg', 'width': 40, 'height': 30}]
    for im in images:
        cv2.imwrite(str(im_dir / im['file_name']), np.zeros((im['height'], im['width'], 3),
                                                             np.uint8))
    data = {'images': images, 'annotations': anns,
            'categories': categories or [{'id': 5, 'name': 'b'}, {'id': 2, 'name': 'a'}]}
    ann_fn = tmp_path / 'ann.json'
    ann_fn.write_text(json.dumps(data))
    return 'coco_json:%s:%s' % (ann_fn, im_dir)


def test_bad_annotations_are_dropped_with_named_warnings(tmp_path, fresh_cfg, caplog):
    square = [5, 5, 15, 5, 15, 15, 5, 15]
    mask = np.zeros((30, 40), np.uint8)
    mask[2:10, 20:35] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    rle['counts'] = rle['counts'].decode('ascii')  # compressed string RLE, as in result files
    anns = [
        {'id': 11, 'image_id': 1, 'category_id': 5, 'bbox': [5, 5, 11, 11], 'area': 100,
         'iscrowd': 0, 'segmentation': [square, [1, 1, 2, 2]]},               # one bad polygon
        {'id': 12, 'image_id': 1, 'category_id': 2, 'bbox': [0, 0, 5, 5], 'area': 10,
         'iscrowd': 0, 'segmentation': [[0, 0, 1, 1, 2, 2]]},                 # no area: dropped
        {'id': 13, 'image_id': 1, 'category_id': 2, 'bbox': [3, 3, 0.5, 4], 'area': 2,
         'iscrowd': 0, 'segmentation': [square]},                             # empty box
        {'id': 14, 'image_id': 1, 'category_id': 2, 'bbox': [20, 2, 15, 8], 'area': 120,
         'iscrowd': 1, 'segmentation': rle},                                  # string RLE crowd
        {'id': 15, 'image_id': 1, 'category_id': 5, 'bbox': [30, 20, 20, 20], 'area': 50,
         'iscrowd': 0, 'segmentation': [[30, 20, 39, 20, 39, 29]]},           # clipped box
    ]
    ds = JsonDataset(_write_dataset(tmp_path, anns))
    with caplog.at_level(logging.INFO, logger='pydetectron.datasets.json_dataset'):
        (entry,) = ds.get_roidb()
    text = caplog.text
    assert 'annotation 11' in text and 'annotation 12' in text
    assert 'dropped 1 annotations with an empty box' in text
    # contiguous ids follow the sorted JSON ids: 2 -> 1 ('a'), 5 -> 2 ('b')
    assert ds.classes == ['__background__', 'a', 'b']
    np.testing.assert_array_equal(entry['gt_classes'], [2, 1, 2])
    np.testing.assert_allclose(entry['boxes'], [[5, 5, 15, 15], [20, 2, 34, 9], [30, 20, 39, 29]])
    assert entry['segms'][0] == [square]
    assert mask_util.decode({'size': [30, 40], 'counts': entry['segms'][1]['counts'].encode()}
                            ).sum() == mask.sum()
    np.testing.assert_array_equal(entry['is_crowd'], [False, True, False])


def test_missing_fields_name_the_file_and_field(tmp_path):
    spec = _write_dataset(tmp_path, [{'id': 7, 'image_id': 1, 'bbox': [0, 0, 4, 4]}])
    with pytest.raises(ValueError, match=r"ann\.json: annotations entry \(id 7\) is missing the "
                                         r"required field 'category_id'"):
        JsonDataset(spec)
    ann_fn = tmp_path / 'ann.json'
    ann_fn.write_text(json.dumps({'images': [], 'annotations': []}))
    with pytest.raises(ValueError, match="missing the required top-level field 'categories'"):
        JsonDataset(spec)
    ann_fn.write_text(json.dumps({'images': [{'id': 1, 'file_name': 'a.jpg', 'width': 3}],
                                  'categories': []}))
    with pytest.raises(ValueError, match="images entry \\(id 1\\) is missing the required field "
                                         "'height'"):
        JsonDataset(spec)


def test_missing_image_is_reported(tmp_path, fresh_cfg, caplog):
    images = [{'id': 1, 'file_name': 'a.jpg', 'width': 40, 'height': 30}]
    spec = _write_dataset(tmp_path, [], images=images)
    os.remove(str(tmp_path / 'images' / 'a.jpg'))
    with caplog.at_level(logging.WARNING):
        roidb = JsonDataset(spec).get_roidb()
    assert len(roidb) == 1 and 'a.jpg' in caplog.text and '1 of 1 image files are missing' in caplog.text


def test_proposals_from_file(tmp_path, fresh_cfg):
    anns = [{'id': 1, 'image_id': 1, 'category_id': 2, 'bbox': [0, 0, 20, 20], 'area': 400,
             'iscrowd': 0, 'segmentation': [[0, 0, 19, 0, 19, 19, 0, 19]]},
            {'id': 2, 'image_id': 1, 'category_id': 5, 'bbox': [25, 5, 15, 20], 'area': 300,
             'iscrowd': 1, 'segmentation': {'size': [30, 40], 'counts': [1200]}}]
    ds = JsonDataset(_write_dataset(tmp_path, anns))
    proposals = {'ids': [1], 'scores': [np.ones(4)],
                 'boxes': [np.array([[0, 0, 19, 19],      # the gt box itself: IoU 1
                                     [0, 0, 9, 19],       # IoU 0.5 with gt 0
                                     [26, 6, 38, 24],     # inside the crowd region
                                     [0, 0, 0.5, 30]],    # too small: filtered
                                    dtype=np.float32)]}
    path = tmp_path / 'props.pkl'
    with open(str(path), 'wb') as f:
        pickle.dump(proposals, f)
    (entry,) = ds.get_roidb(proposal_file=str(path), crowd_filter_thresh=0.7)
    assert entry['boxes'].shape == (5, 4)
    np.testing.assert_array_equal(entry['gt_classes'], [1, 2, 0, 0, 0])
    np.testing.assert_allclose(entry['max_overlaps'], [1, -1, 1, 0.5, -1])
    np.testing.assert_array_equal(entry['max_classes'], [1, 0, 1, 1, 0])
    np.testing.assert_array_equal(entry['box_to_gt_ind_map'], [0, 1, 0, 0, 1])

    class Evil(object):
        def __reduce__(self):
            return (os.system, ('true',))
    with open(str(path), 'wb') as f:
        pickle.dump({'ids': [1], 'boxes': [Evil()]}, f)
    with pytest.raises(pickle.UnpicklingError, match='refusing'):
        ds.get_roidb(proposal_file=str(path))
