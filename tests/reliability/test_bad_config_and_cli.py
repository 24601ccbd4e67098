"""Issue 9, item 1 (config and command line), through ``tools/train_net_step.py`` and
``tools/infer_simple.py`` as a user calls them: each mistake is one clear line on stderr naming
the key / file / name and what was expected, exit code 2 (or non-zero for infer_simple), and no
traceback. Unit tests of each check live beside their modules (tests/core/test_config.py,
tests/engine/test_checkpoint.py, tests/tools/)."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, THIN_CFG, final_model

sys.path.insert(0, os.path.join(ROOT, 'tools'))
import train_net_step  # noqa: E402


def train(capsys, tmp_path, *extra, sets=()):
    argv = ['--dataset', 'shapes', '--cfg', THIN_CFG, '--no_cuda', '--nw', '0',
            '--output_dir', str(tmp_path / 'out')] + list(extra)
    if sets:
        argv += ['--set'] + list(sets)
    code = train_net_step.main(argv)
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    return code, err


@pytest.mark.parametrize('sets,expected', [
    (['TRAIN.SCALEZ', '(64,)'], 'unknown config key TRAIN.SCALEZ (in <command line --set>); '
                                'did you mean TRAIN.SCALES?'),
    (['TRAIN.SCALES', '64'], 'config key TRAIN.SCALES (from <command line --set>) expects tuple'),
    (['MODEL.CONV_BODY', 'FPN.fpn_ResNet51_conv5_body'],
     "MODEL.CONV_BODY: unknown function 'FPN.fpn_ResNet51_conv5_body'; valid names are: "
     "FPN.fpn_ResNet101_conv5_P2only_body"),
    (['FAST_RCNN.ROI_BOX_HEAD', 'fast_rcnn_heads.roi_3mlp_head'],
     'valid names are: ResNet.ResNet_roi_conv5_head, fast_rcnn_heads.roi_2mlp_head'),
    (['MRCNN.ROI_MASK_HEAD', 'mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare'],
     'shares res5 with the box head, which must then be ResNet.ResNet_roi_conv5_head'),
    (['MODEL.CONV_BODY', 'ResNet.ResNet50_conv4_body'],
     "MODEL.CONV_BODY 'ResNet.ResNet50_conv4_body' and FPN.FPN_ON True disagree"),
])
def test_bad_config_is_one_clear_line(capsys, tmp_path, fresh_cfg, sets, expected):
    code, err = train(capsys, tmp_path, sets=sets)
    assert code == 2 and expected in err, err


def test_missing_weights_files(capsys, tmp_path, fresh_cfg):
    missing = str(tmp_path / 'nope.pkl')
    code, err = train(capsys, tmp_path, sets=['TRAIN.WEIGHTS', missing])
    assert code == 2 and 'TRAIN.WEIGHTS' in err and missing in err
    from pydetectron.core.config import reset_cfg
    reset_cfg()
    code, err = train(capsys, tmp_path, '--load_detectron', missing)
    assert code == 2 and '--load_detectron' in err and missing in err


def test_unknown_dataset_is_a_clear_error(capsys, tmp_path, fresh_cfg):
    code, err = train(capsys, tmp_path, '--dataset', 'no_such_dataset')
    assert code == 2 and 'no_such_dataset' in err, err


def test_checkpoint_of_another_architecture_lists_mismatches(capsys, tmp_path, fresh_cfg,
                                                             reference_run):
    """The thin model's checkpoint loaded into the same model with FPN.DIM 32 instead of 64."""
    from pydetectron.engine import checkpoint as ck
    path = ck.find_latest_checkpoint(str(reference_run[2]))
    code, err = train(capsys, tmp_path, '--load_ckpt', path, sets=['FPN.DIM', '32'])
    assert code == 2, err
    assert 'shape mismatch' in err and path in err
    assert '(64, ' in err and '(32, ' in err          # checkpoint vs model shapes


def _infer(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'infer_simple.py'),
                           '--cfg', THIN_CFG, '--no_cuda'] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def test_infer_simple_missing_and_empty_image_dir(tmp_path, reference_run):
    from pydetectron.engine import checkpoint as ck
    ckpt = ck.find_latest_checkpoint(str(reference_run[2]))
    proc = _infer('--load_ckpt', ckpt, '--dataset', 'shapes', '--image_dir', tmp_path / 'nope')
    assert proc.returncode != 0 and 'is not a directory' in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    empty = tmp_path / 'empty'
    empty.mkdir()
    proc = _infer('--load_ckpt', ckpt, '--dataset', 'shapes', '--image_dir', empty)
    assert proc.returncode != 0 and 'no image files' in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('tool', ['test_net.py', 'infer_simple.py'])
def test_inference_tools_name_an_unknown_body_in_one_line(tool, tmp_path):
    """test_net.py and infer_simple.py answer a typo in a body name like train_net_step.py does."""
    import subprocess
    import sys as _sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg_file = tmp_path / 'bad.yaml'
    cfg_file.write_text("MODEL:\n  TYPE: generalized_rcnn\n  CONV_BODY: FPN.fpn_ResNet51_conv5_body\n"
                        "  NUM_CLASSES: 4\n  FASTER_RCNN: True\nFPN:\n  FPN_ON: True\n"
                        "  MULTILEVEL_ROIS: True\n  MULTILEVEL_RPN: True\n")
    ckpt = tmp_path / 'model.pth'
    import torch
    torch.save({'model': {}}, str(ckpt))
    args = [_sys.executable, os.path.join(root, 'tools', tool), '--cfg', str(cfg_file),
            '--load_ckpt', str(ckpt), '--no_cuda']
    if tool == 'test_net.py':
        args += ['--dataset', 'shapes', '--output_dir', str(tmp_path / 'out')]
    else:
        img_dir = tmp_path / 'imgs'
        img_dir.mkdir()
        import numpy as np
        import cv2
        cv2.imwrite(str(img_dir / 'a.jpg'), np.zeros((32, 32, 3), np.uint8))
        args += ['--image_dir', str(img_dir), '--output_dir', str(tmp_path / 'out'),
                 '--dataset', 'shapes']
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'fpn_ResNet51_conv5_body' in proc.stderr
    assert 'fpn_ResNet50_conv5_body' in proc.stderr  # the valid names are listed
    assert 'Traceback' not in proc.stderr
