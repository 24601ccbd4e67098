"""datasets.dataset_specs: coco_json: / .json / voc: / cityscapes: names parsed into catalog entries,
and the registrations child processes read from the environment."""
import hashlib
import json
import os

import pytest

from pydetectron.datasets import dataset_specs as ds
from pydetectron.utils.errors import DatasetError


def _write_json(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump({'images': [], 'annotations': [], 'categories': []}, f)
    return path


def test_coco_json_names_are_stable_and_file_system_safe(tmp_path):
    ann = _write_json(str(tmp_path / 'annotations' / 'my pets+val.json'))
    im_dir = str(tmp_path / 'photos')
    name, entry = ds.parse_coco_json_spec('coco_json:%s:%s' % (ann, im_dir))
    # outputs are written under this name: it must not change between versions
    digest = hashlib.sha1(('%s|%s' % (ann, im_dir)).encode('utf-8')).hexdigest()[:8]
    assert name == 'json_my_pets_val_' + digest
    assert entry == {ds.IM_DIR: im_dir, ds.ANN_FN: ann}
    # another image folder is another dataset
    other, _ = ds.parse_coco_json_spec('coco_json:%s:%s' % (ann, tmp_path))
    assert other != name and other.startswith('json_my_pets_val_')


def test_image_folder_is_inferred_in_the_documented_order(tmp_path):
    ann = _write_json(str(tmp_path / 'annotations' / 'instances_val2017.json'))
    assert ds.is_spec(ann) and not ds.is_folder_spec(ann)
    for d in ('val2017', 'images/val2017'):
        os.makedirs(str(tmp_path / d))
    assert ds.parse_coco_json_spec(ann)[1][ds.IM_DIR] == str(tmp_path / 'images' / 'val2017')
    os.rmdir(str(tmp_path / 'images' / 'val2017'))
    # <root>/<split> before <root>/images
    assert ds.parse_coco_json_spec(ann)[1][ds.IM_DIR] == str(tmp_path / 'val2017')
    os.rmdir(str(tmp_path / 'val2017'))
    os.rmdir(str(tmp_path / 'images'))
    with pytest.raises(FileNotFoundError, match='no image directory'):
        ds.parse_coco_json_spec(ann)
    # last: the JSON's own folder when it holds images
    open(str(tmp_path / 'annotations' / 'a.jpg'), 'wb').close()
    assert ds.parse_coco_json_spec(ann)[1][ds.IM_DIR] == str(tmp_path / 'annotations')


def test_malformed_specs_name_what_was_expected(tmp_path):
    with pytest.raises(DatasetError, match='coco_json:<annotation_file.json>'):
        ds.parse_coco_json_spec('coco_json:%s/annotations.txt' % tmp_path)
    with pytest.raises(ValueError, match='voc:<folder>'):
        ds.parse_folder_spec('voc:', str(tmp_path))
    with pytest.raises(FileNotFoundError, match='folder .* not found'):
        ds.parse_folder_spec('cityscapes:%s/none' % tmp_path, str(tmp_path))


def test_folder_spec_gives_back_the_spec_of_a_folder_dataset():
    voc = {ds.VOC_ROOT: '/d/VOC2007', ds.SPLIT: 'test'}
    assert ds.folder_spec('vocdir_VOC2007_test_0123abcd', voc) == 'voc:/d/VOC2007:test'
    city = {ds.CITYSCAPES_ROOT: '/d/cs', ds.SPLIT: 'val'}
    assert ds.folder_spec('cityscapesdir_cs_val_0123abcd', city) == 'cityscapes:/d/cs:val'
    # a catalog entry pointed at its folder keeps its catalog name (every process has it)
    assert ds.folder_spec('voc_2007_test', voc) is None
    assert ds.folder_spec('json_x_0123abcd', {ds.IM_DIR: '/d', ds.ANN_FN: '/d/x.json'}) is None


def test_registrations_travel_through_the_environment(monkeypatch, caplog):
    monkeypatch.setenv(ds.ENV_KEY, json.dumps({'broken': {ds.IM_DIR: '/d'}, 'odd': 3}))
    ds.export_registration('pets', {ds.IM_DIR: '/d/im', ds.ANN_FN: '/d/a.json'})
    ds.export_registration('pets_val', {ds.IM_DIR: '/d/v', ds.ANN_FN: '/d/v.json'})
    # entries without both paths are left out
    assert ds.exported_registrations() == {
        'pets': {ds.IM_DIR: '/d/im', ds.ANN_FN: '/d/a.json'},
        'pets_val': {ds.IM_DIR: '/d/v', ds.ANN_FN: '/d/v.json'}}
    monkeypatch.setenv(ds.ENV_KEY, '{not json')
    assert ds.exported_registrations() == {}
    assert 'not valid JSON' in caplog.text
    ds.export_registration('pets', {ds.IM_DIR: '/d/im', ds.ANN_FN: '/d/a.json'})
    assert list(ds.exported_registrations()) == ['pets']
