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
