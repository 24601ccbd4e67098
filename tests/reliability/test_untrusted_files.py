"""Issue 9, item 2: files from elsewhere cannot run code when loaded.

Every pickle the package reads -- Detectron weights, proposal files, detections files -- is
planted with payloads that would run a command or import a module with side effects; loading must
refuse them (naming the file and the global) and leave no trace of having run anything. PyTorch
checkpoints are read with ``torch.load(weights_only=True)``.
"""
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from pydetectron.core import test_engine
from pydetectron.datasets.json_dataset import load_proposals
from pydetectron.engine import checkpoint as ck
from pydetectron.utils.detectron_weight_helper import load_detectron_pkl
from pydetectron.utils.io import (UnsafePickleError, atomic_pickle_dump, atomic_write,
                                  load_pickle_safe)

# Every reader of *.pkl in the package: (name, function of a path).
READERS = [
    ('weights', load_detectron_pkl),
    ('proposals', load_proposals),
    ('detections', test_engine.load_object),
    ('generic', load_pickle_safe),
]


class _RunsCommand:
    """Unpickling calls os.system('touch <marker>')."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, ('touch %s' % self.marker,))


def _payloads(tmp_path, monkeypatch):
    """{name: (pickle bytes, marker path that must not exist afterwards)}."""
    out = {}
    marker = tmp_path / 'ran_command'
    # A dict shaped like each real file, with the payload inside it.
    out['os.system in a weights-like dict'] = (
        pickle.dumps({'blobs': {'conv1_w': _RunsCommand(marker)}}, protocol=2), marker)
    out['os.system in a proposals-like dict'] = (
        pickle.dumps({'ids': [1], 'boxes': [_RunsCommand(marker)]}, protocol=4), marker)
    # Protocol 0, subprocess.Popen: another module the file asks to import.
    marker2 = tmp_path / 'ran_popen'
    out['subprocess.Popen (protocol 0)'] = (
        b"csubprocess\nPopen\n((S'touch'\nS'%s'\nltR." % str(marker2).encode(), marker2)
    # builtins.exec of Python source
    marker3 = tmp_path / 'ran_exec'
    out['builtins.exec'] = (
        b"cbuiltins\nexec\n(S\"open('%s', 'w').close()\"\ntR." % str(marker3).encode(), marker3)
    # A module whose import alone has a side effect.
    marker4 = tmp_path / 'imported'
    (tmp_path / 'evil_reliability_mod.py').write_text(
        "open(%r, 'w').close()\ndef f(*a):\n    return a\n" % str(marker4))
    monkeypatch.syspath_prepend(str(tmp_path))
    out['module import side effect'] = (b"\x80\x02cevil_reliability_mod\nf\n)R.", marker4)
    return out


@pytest.mark.parametrize('reader_name,reader', READERS, ids=[r[0] for r in READERS])
def test_planted_pickles_are_refused_and_nothing_ran(tmp_path, monkeypatch, reader_name, reader):
    for name, (data, marker) in _payloads(tmp_path, monkeypatch).items():
        path = tmp_path / ('evil_%s.pkl' % reader_name)
        path.write_bytes(data)
        with pytest.raises(UnsafePickleError) as e:
            reader(str(path))
        msg = str(e.value)
        assert str(path) in msg and 'refusing' in msg, (name, msg)
        assert not marker.exists(), '%s: the payload ran' % name
    assert 'evil_reliability_mod' not in sys.modules


def test_refusal_names_the_global(tmp_path):
    path = tmp_path / 'x.pkl'
    path.write_bytes(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    with pytest.raises(UnsafePickleError, match=r'posix\.system'):
        load_pickle_safe(str(path))


@pytest.mark.parametrize('reader_name,reader', READERS, ids=[r[0] for r in READERS])
def test_real_files_still_load(tmp_path, reader_name, reader):
    """The allow-list is not so tight that genuine files fail: numpy arrays of every dtype the
    package writes, Python 2 style (protocol 2) and Python 3 (protocol 4) pickles."""
    blobs = {'conv1_w': np.arange(6, dtype=np.float32).reshape(2, 3),
             'ids': np.array([1, 2], dtype=np.int64), 'rle': b'\x00\x01'}
    data = {'blobs': blobs, 'boxes': [blobs['conv1_w']], 'all_boxes': [[], [blobs['conv1_w']]]}
    for protocol in (2, 4):
        path = tmp_path / ('ok%d.pkl' % protocol)
        with open(path, 'wb') as f:
            pickle.dump(data, f, protocol=protocol)
        out = reader(str(path))
        arr = out['conv1_w'] if reader_name == 'weights' else out['blobs']['conv1_w']
        np.testing.assert_array_equal(arr, blobs['conv1_w'])


def test_truncated_pickle_names_the_file(tmp_path):
    path = tmp_path / 'half.pkl'
    path.write_bytes(pickle.dumps({'a': np.zeros(100)}, protocol=4)[:50])
    with pytest.raises(pickle.UnpicklingError, match='half.pkl'):
        load_pickle_safe(str(path))


def test_pth_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / 'pth_ran'
    path = tmp_path / 'model_step0.pth'
    torch.save({'model': {'w': torch.zeros(1)}, 'step': _RunsCommand(marker)}, str(path))
    with pytest.raises(ck.CheckpointError, match='weights_only'):
        ck.load_checkpoint(str(path))
    assert not marker.exists()


def test_atomic_writes_keep_the_old_file_on_failure(tmp_path):
    path = tmp_path / 'dets.pkl'
    atomic_pickle_dump({'v': 1}, str(path))
    with pytest.raises(RuntimeError):
        with atomic_write(str(path)) as f:
            f.write(b'partial')
            raise RuntimeError('crash mid-write')
    assert load_pickle_safe(str(path)) == {'v': 1}
    assert os.listdir(tmp_path) == ['dets.pkl']      # no temporary file left behind
