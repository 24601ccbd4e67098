"""datasets.dataset_catalog: Detectron's layout, coco_json specs, --dataset resolution."""
import json
import os
import subprocess
import sys

import pytest

from pydetectron.datasets import dataset_catalog as dc
from pydetectron.datasets import dataset_specs


def test_detectron_entries_resolve_under_the_data_dir(fresh_cfg, tmp_path):
    fresh_cfg.DATA_DIR = str(tmp_path)
    assert dc.get_im_dir('coco_2014_train') == os.path.join(str(tmp_path), 'coco/coco_train2014')
    assert dc.get_ann_fn('coco_2017_val') == os.path.join(
        str(tmp_path), 'coco/annotations/instances_val2017.json')
    assert dc.get_ann_fn('keypoints_coco_2014_minival').endswith(
        'coco/annotations/person_keypoints_minival2014.json')
    # the 2017 test splits reuse the 2015 test images, whose files carry a prefix
    assert dc.get_im_dir('coco_2017_test-dev').endswith('coco/coco_test2015')
    assert dc.get_im_prefix('coco_2017_test-dev') == 'COCO_test2015_'
    assert dc.get_im_prefix('coco_2014_train') == ''
    for name in ('coco_2014_val', 'coco_2014_valminusminival', 'coco_2015_test',
                 'coco_2015_test-dev', 'coco_2017_train', 'coco_2017_test',
                 'keypoints_coco_2014_train', 'keypoints_coco_2014_val',
                 'keypoints_coco_2014_valminusminival', 'keypoints_coco_2015_test',
                 'keypoints_coco_2015_test-dev', 'keypoints_coco_2017_train',
                 'keypoints_coco_2017_val', 'keypoints_coco_2017_test',
                 'keypoints_coco_2017_test-dev', 'shapes_train', 'shapes_val',
                 'keypoints_shapes_train', 'keypoints_shapes_val'):
        assert dc.contains(name) and name in dc.datasets()


def test_resolve_shorthands_and_num_classes():
    assert dc.resolve_dataset_arg('coco2017') == (('coco_2017_train',), 81)
    assert dc.resolve_dataset_arg('coco2017', training=False) == (('coco_2017_val',), 81)
    assert dc.resolve_dataset_arg('coco2014') == (
        ('coco_2014_train', 'coco_2014_valminusminival'), 81)
    assert dc.resolve_dataset_arg('coco2014', training=False) == (('coco_2014_minival',), 81)
    assert dc.resolve_dataset_arg('keypoints_coco2017') == (('keypoints_coco_2017_train',), 2)
    assert dc.resolve_dataset_arg('coco_2014_train,coco_2017_val') == (
        ('coco_2014_train', 'coco_2017_val'), 81)
    with pytest.raises(ValueError, match='different numbers of classes'):
        dc.resolve_dataset_arg('coco_2017_train,keypoints_coco_2017_train')


def test_unknown_name_suggests_close_ones():
    with pytest.raises(KeyError, match="coco_2017_train"):
        dc.resolve_dataset_arg('coco_2017_trian')


def test_json_path_and_spec(coco_mini):
    ann = os.path.join(coco_mini, 'annotations', 'instances_val2017.json')
    names, num_classes = dc.resolve_dataset_arg(ann, training=False)
    assert num_classes == 81 and len(names) == 1
    name = names[0]
    assert name.startswith('json_instances_val2017_') and '/' not in name and ':' not in name
    # the image folder is inferred from the layout: <root>/images/<split>
    assert dc.get_im_dir(name) == os.path.join(coco_mini, 'images', 'val2017')
    assert dc.get_ann_fn(name) == ann
    im_dir = os.path.join(coco_mini, 'images', 'train2017')
    spec = 'coco_json:%s:%s' % (ann, im_dir)
    (spec_name,), _ = dc.resolve_dataset_arg(spec)
    assert dc.get_im_dir(spec_name) == im_dir and spec_name != name
    assert dc.canonical_name(spec) == spec_name  # the spec itself works as a dataset name
    kp_ann = os.path.join(coco_mini, 'annotations', 'person_keypoints_train2017.json')
    assert dc.resolve_dataset_arg('coco_json:' + kp_ann)[1] == 2


def test_spec_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found'):
        dc.resolve_dataset_arg('coco_json:%s/none.json' % tmp_path)
    ann = tmp_path / 'lonely.json'
    ann.write_text(json.dumps({'images': [], 'categories': []}))
    with pytest.raises(FileNotFoundError, match='image directory'):
        dc.resolve_dataset_arg(str(ann))


def test_register_dataset_is_seen_by_child_processes(tmp_path, monkeypatch):
    # registrations travel through the environment; restore it after the test
    monkeypatch.setenv(dataset_specs.ENV_KEY, os.environ.get(dataset_specs.ENV_KEY, '{}'))
    ann = tmp_path / 'anns.json'
    ann.write_text(json.dumps({'images': [], 'annotations': [],
                               'categories': [{'id': 3, 'name': 'a'}, {'id': 7, 'name': 'b'}]}))
    dc.register_dataset('my_pets_train', str(tmp_path), str(ann))
    assert dc.get_ann_fn('my_pets_train') == str(ann)
    assert dc.resolve_dataset_arg('my_pets_train') == (('my_pets_train',), 3)
    lib = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), 'lib')
    code = ('import sys; sys.path.insert(0, %r); from pydetectron.datasets import '
            'dataset_catalog as dc; print(dc.get_ann_fn("my_pets_train"))' % lib)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         env=dict(os.environ), timeout=120)
    assert out.stdout.strip() == str(ann), out.stderr
    with pytest.raises(ValueError, match='plain name'):
        dc.register_dataset('coco_json:x.json', str(tmp_path), str(ann))
