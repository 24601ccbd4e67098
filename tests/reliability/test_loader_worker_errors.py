"""Issue 9, item 4: an exception inside a DataLoader worker surfaces in the training process as
an error that names the image and its id (not a hang, not an anonymous worker traceback)."""
import os

import pytest

from pydetectron.datasets.roidb import combined_roidb_for_training
from pydetectron.roi_data import loader as loader_utils


@pytest.fixture
def train_roidb(coco_mini, fresh_cfg):
    fresh_cfg.TRAIN.SCALES = (96,)
    fresh_cfg.TRAIN.MAX_SIZE = 128
    spec = 'coco_json:%s:%s' % (os.path.join(coco_mini, 'annotations', 'instances_train2017.json'),
                                os.path.join(coco_mini, 'images', 'train2017'))
    return combined_roidb_for_training((spec,), ())


@pytest.mark.parametrize('num_workers', [0, 1])
def test_worker_exception_names_the_image_id(train_roidb, monkeypatch, num_workers):
    roidb, ratio_list, ratio_index = train_roidb
    probe = loader_utils.build_train_loader(roidb, ratio_list, ratio_index, batch_size=2,
                                            num_gpus=1, num_workers=0)
    bad = roidb[probe.batch_sampler.batch(1)[0][0]]      # in the second minibatch
    real = loader_utils.get_minibatch_entry

    def faulty(entry, *args, **kwargs):
        # A fault in the per-image code (not an unreadable image, which is replaced)
        if entry['id'] == bad['id']:
            raise ValueError('synthetic fault in the minibatch code')
        return real(entry, *args, **kwargs)

    # Workers fork from this process, so they see the patched function too.
    monkeypatch.setattr(loader_utils, 'get_minibatch_entry', faulty)
    loader = loader_utils.build_train_loader(roidb, ratio_list, ratio_index, batch_size=2,
                                             num_gpus=1, num_workers=num_workers)
    with pytest.raises(Exception) as e:
        for _, _ in zip(range(2), loader):
            pass
    msg = str(e.value)
    assert 'image id %s' % bad['id'] in msg, msg
    assert os.path.basename(bad['image']) in msg and 'synthetic fault' in msg


_EXIT_WITH_LIVE_WORKERS = r'''
import os, sys
sys.path.insert(0, sys.argv[1])
from pydetectron.core.config import cfg
from pydetectron.datasets.roidb import combined_roidb_for_training
from pydetectron.roi_data import loader as loader_utils
cfg.TRAIN.SCALES = (64,)
cfg.TRAIN.MAX_SIZE = 96
spec = 'coco_json:%s:%s' % (os.path.join(sys.argv[2], 'annotations', 'instances_train2017.json'),
                            os.path.join(sys.argv[2], 'images', 'train2017'))
roidb, ratio_list, ratio_index = combined_roidb_for_training((spec,), ())
loader = loader_utils.build_train_loader(roidb, ratio_list, ratio_index, batch_size=1,
                                         num_gpus=1, num_workers=2)
KEPT = iter(loader)          # never shut down: alive at interpreter exit
next(KEPT)
print('one batch', flush=True)
'''


def test_interpreter_exits_with_an_iterator_never_shut_down(coco_mini, tmp_path):
    """Workers ignore SIGTERM (so a signal to the process group leaves the decision to the
    training process); multiprocessing's exit handler ends daemonic children with SIGTERM and
    joins them. A loader iterator still alive at exit (held by a global, a traceback, a cycle)
    must not turn that join into a hang: the process exits at once, and no worker outlives it."""
    import subprocess
    import sys
    script = tmp_path / 'exit_with_workers.py'
    script.write_text(_EXIT_WITH_LIVE_WORKERS)
    lib = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), 'lib')
    proc = subprocess.Popen([sys.executable, str(script), lib, coco_mini],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        pytest.fail('the process did not exit with a live loader iterator:\n' + out)
    assert proc.returncode == 0, out
    assert 'one batch' in out
    # nothing of its process group is left (the workers were ended with it)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
