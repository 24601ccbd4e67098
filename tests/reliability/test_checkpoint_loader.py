"""Issue 16, item 4: every tool loads weights through one loader
(``engine.initial_weights.load_weights``, also reached as ``engine.checkpoint.load_weights``;
``load_checkpoint`` for ``--resume``), and every way a weights file can be
unusable is one line (a ``CheckpointError``) naming the file and the flag. The fake detector of
the engine tests stands in for the model (its layers have Detectron blob names)."""
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from torch import nn

from pydetectron.engine import checkpoint as ck
from pydetectron.utils.errors import CheckpointError, UserInputError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'engine'))
from _engine_fakes import FakeDetector, build  # noqa: E402


def _one_line(e):
    msg = str(e.value)
    assert '\n' not in msg, msg
    assert isinstance(e.value, UserInputError)
    return msg


@pytest.fixture
def saved(tmp_path):
    model, opt, sched = build()
    return model, ck.save_checkpoint(str(tmp_path / 'run'), 4, model, opt, sched)


@pytest.mark.parametrize('kind,expected', [
    ('missing', 'not found'),
    ('empty', 'the file is empty'),
    ('truncated', 'is incomplete or not a torch checkpoint (truncated'),
    ('a pickle', 'this is a pickle, not a torch checkpoint'),
    ('text', 'is incomplete or not a torch checkpoint'),
    ('no model', "has no 'model' entry"),
    ('model not a state dict', "its 'model' entry is not a state dict"),
])
def test_unusable_files(tmp_path, saved, kind, expected):
    path = tmp_path / 'x.pth'
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated':
        raw = open(saved[1], 'rb').read()
        path.write_bytes(raw[:len(raw) // 2])
    elif kind == 'a pickle':
        path.write_bytes(pickle.dumps({'blobs': {'conv1_w': np.zeros(3)}}, protocol=2))
    elif kind == 'text':
        path.write_text('model weights, trust me')
    elif kind == 'no model':
        torch.save({'state_dict': {}}, str(path))
    elif kind == 'model not a state dict':
        torch.save({'model': [1, 2]}, str(path))
    with pytest.raises(CheckpointError) as e:
        ck.load_checkpoint(str(path), flag='--load_ckpt')
    msg = _one_line(e)
    assert expected in msg and str(path) in msg and '--load_ckpt' in msg, msg
    with pytest.raises(CheckpointError):
        ck.load_weights(FakeDetector(), str(path), flag='--load_ckpt', kind='checkpoint')


def test_weights_only_file_given_to_resume(tmp_path, saved):
    model, full = saved
    path = tmp_path / 'weights.pth'
    torch.save({'model': model.state_dict()}, str(path))
    assert ck.load_checkpoint(str(path))['model'].keys() == model.state_dict().keys()
    with pytest.raises(CheckpointError) as e:
        ck.load_checkpoint(str(path), for_resume=True, flag='--resume')
    msg = _one_line(e)
    assert "--resume: %s holds model weights only (no 'step' or 'optimizer')" % path in msg
    assert 'pass --load_ckpt %s without --resume' % path in msg
    assert ck.load_checkpoint(full, for_resume=True)['step'] == 4


def test_other_architecture_names_the_first_mismatches_in_one_line(tmp_path, saved):
    other = FakeDetector()
    other.cls_score = nn.Linear(16, 7)
    other.extra = nn.Linear(2, 2)
    with pytest.raises(CheckpointError) as e:
        ck.load_weights(other, saved[1], flag='--load_ckpt')
    msg = _one_line(e)
    assert msg.startswith('--load_ckpt %s does not match this model' % saved[1])
    assert 'shape mismatch: cls_score.weight checkpoint (3, 16) vs model (7, 16)' in msg
    assert 'missing in checkpoint: extra.weight (2, 2)' in msg


def test_optimizer_state_of_another_model(saved):
    model, full = saved
    ckpt = ck.load_checkpoint(full)
    other = nn.Linear(3, 3)
    opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError) as e:
        ck.load_optimizer_state(opt, ckpt['optimizer'], source=full)
    assert 'its optimizer state does not fit this run (SGD)' in _one_line(e)


# -- Detectron pickles --------------------------------------------------------------------------- #

class DetectronNamedFake(FakeDetector):
    """The fake detector with Detectron blob names: 'cls_score.weight' -> 'cls_score_w'."""

    def detectron_weight_mapping(self):
        def blob(name):
            base, _, leaf = name.rpartition('.')
            suffix = {'weight': '_w', 'bias': '_b'}.get(leaf)
            return (base.replace('.', '_') + suffix) if suffix else name.replace('.', '_')
        return {k: blob(k) for k in self.state_dict()}, []


def _detectron_file(tmp_path, model, drop=None, reshape=None):
    from pydetectron.utils.detectron_weight_helper import detectron_blobs_of
    blobs = {b: t.detach().numpy().copy() for _, t, b in detectron_blobs_of(model)}
    if drop:
        del blobs[drop]
    if reshape:
        blobs[reshape] = np.zeros((5, 5), np.float32)
    path = tmp_path / 'model.pkl'
    with open(path, 'wb') as f:
        pickle.dump({'blobs': blobs}, f, protocol=2)
    return path


def test_detectron_pkl_loads_and_errors_are_one_line(tmp_path):
    model = DetectronNamedFake()
    path = _detectron_file(tmp_path, model)
    fresh = DetectronNamedFake()
    ck.load_weights(fresh, str(path), flag='--load_detectron')     # recognised as a pickle
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    for drop, reshape, expected in (('cls_score_w', None, 'blob cls_score_w (for parameter '
                                     'cls_score.weight, shape (3, 16)) is missing from the file'),
                                    (None, 'bbox_pred_w', 'blob bbox_pred_w has shape (5, 5) in '
                                     'the file but parameter bbox_pred.weight has shape (4, 16)')):
        path = _detectron_file(tmp_path, model, drop, reshape)
        with pytest.raises(CheckpointError) as e:
            ck.load_weights(DetectronNamedFake(), str(path), flag='--load_detectron',
                            kind='detectron')
        msg = _one_line(e)
        assert expected in msg and str(path) in msg, msg
        assert isinstance(e.value, ValueError)      # what it was before the family
    raw = open(path, 'rb').read()
    path.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(CheckpointError) as e:
        ck.load_weights(DetectronNamedFake(), str(path), flag='--load_detectron',
                        kind='detectron')
    assert 'truncated, or not a pickle' in _one_line(e)
    assert isinstance(e.value, pickle.UnpicklingError)


def test_another_format_plugs_into_the_one_loader(tmp_path):
    """``register_weights_format`` is how other checkpoint formats join ``load_weights``."""
    seen = []
    path = tmp_path / 'other.ckpt'
    path.write_bytes(b'OTHER-FORMAT')
    ck.register_weights_format('test-format', lambda p: open(p, 'rb').read(5) == b'OTHER',
                               lambda m, p, flag: seen.append((p, flag)))
    try:
        ck.load_weights(FakeDetector(), str(path), flag='--load_ckpt')
    finally:
        ck._WEIGHTS_FORMATS[:] = [f for f in ck._WEIGHTS_FORMATS if f[0] != 'test-format']
    assert seen == [(str(path), '--load_ckpt')]
    with pytest.raises(CheckpointError, match='neither a torch checkpoint'):
        ck.load_weights(FakeDetector(), str(path), flag='--load_ckpt')


def test_one_loader_for_training_and_the_tools(tmp_path):
    """The two names are one function; its class-head rule depends on who calls: exact for the
    test tools (default), skipped with a warning or refused for fine-tuning (training)."""
    from pydetectron.engine import initial_weights
    assert ck.load_weights is initial_weights.load_weights
    assert ck._WEIGHTS_FORMATS is initial_weights._WEIGHTS_FORMATS
    src = DetectronNamedFake()
    path = _detectron_file(tmp_path, src)
    other = DetectronNamedFake()
    other.cls_score = nn.Linear(16, 5)          # another class count
    before = other.cls_score.weight.detach().clone()
    with pytest.raises(CheckpointError) as e:    # inference: a mismatch like any other
        ck.load_weights(other, str(path), flag='--load_detectron', kind='detectron')
    assert 'blob cls_score_w has shape (3, 16) in the file but parameter cls_score.weight ' \
        'has shape (5, 16)' in _one_line(e)
    loaded = initial_weights.load_weights(other, str(path), flag='TRAIN.WEIGHTS',
                                          strict_class_heads=False)
    assert 'cls_score.weight' not in loaded and 'fc6.weight' in loaded
    assert torch.equal(other.cls_score.weight, before)
    assert torch.equal(other.fc6.weight, src.fc6.weight)
    with pytest.raises(CheckpointError, match='--strict_class_heads') as e:
        initial_weights.load_weights(other, str(path), flag='TRAIN.WEIGHTS',
                                     strict_class_heads=True)
    assert 'cls_score.weight (file [3, 16] vs model [5, 16])' in _one_line(e)
