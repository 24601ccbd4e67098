"""dev/compare_device_host.py on the CPU: the device post-processing code (run on CPU tensors)
against Detectron's host path on a real photo."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'dev'))

import compare_device_host  # noqa: E402


@pytest.mark.slow
def test_device_code_gives_detectrons_detections_on_a_photo(coco_mini, registry_env, tmp_path):
    from pydetectron.core.config import reset_cfg
    dataset = 'coco_json:%s:%s' % (
        os.path.join(coco_mini, 'annotations', 'instances_val2017.json'),
        os.path.join(coco_mini, 'images', 'val2017'))
    try:
        summary = compare_device_host.main(
            ['--device', 'cpu', '--scale', '256', '--max-size', '427', '--max-images', '1',
             '--dataset', dataset, '--json', str(tmp_path / 'c.json')])
    finally:
        reset_cfg()
    assert summary['images'] == 1
    assert summary['detections_device'] == summary['detections_host'] == 100
    assert summary['images_with_other_detections'] == 0 and summary['rows_differing'] == 0
    assert summary['max_box_diff'] == 0.0 and summary['max_score_diff'] == 0.0
    assert summary['masks'] == 100
    # random weights: probabilities near 0.5, a rounding step flips a pixel now and then
    assert summary['pixels_differing_per_million'] < 10
    assert os.path.exists(tmp_path / 'c.json')
