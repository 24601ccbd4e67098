"""Data-dependent initial weights for the GPU training check (dev/gpu/train.sh): the random model
with every AffineChannel set to the per-channel mean / std of its input on 8 training images (what
an ImageNet BN folded into AffineChannel is, with statistics from these images), saved as a
checkpoint for --load_ckpt. No ImageNet weights are at hand on the GPU machine, and the frozen-BN
R-50 diverges from random weights.

    python dev/gpu/init_weights.py CONFIG DATASET SCALE MAX_SIZE OUT.pth
"""
import sys

import torch

from pydetectron.core.config import (
    assert_and_infer_cfg, cfg, merge_cfg_from_file, merge_cfg_from_list)
from pydetectron.datasets import dataset_catalog
from pydetectron.datasets.roidb import combined_roidb_for_training
from pydetectron.modeling.model_builder import Generalized_RCNN
from pydetectron.nn.affine import AffineChannel2d
from pydetectron.roi_data.loader import build_train_loader

def fold_statistics(module, inputs):
    """y = (x - mean) / std per channel, the statistics of this input: a folded, frozen BN."""
    x = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1)  # (C, N*H*W)
    std, mean = torch.std_mean(x, dim=1)
    module.weight.data.copy_(1. / (std + 1e-5))
    module.bias.data.copy_(-mean / (std + 1e-5))


def main(cfg_file, dataset, scale, max_size, out):
    merge_cfg_from_file(cfg_file)
    names, num_classes = dataset_catalog.resolve_dataset_arg(dataset, training=True)
    merge_cfg_from_list(['MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False,
                         'MODEL.NUM_CLASSES', num_classes, 'TRAIN.SCALES', (int(scale),),
                         'TRAIN.MAX_SIZE', int(max_size)])
    assert_and_infer_cfg()
    roidb, ratio_list, ratio_index = combined_roidb_for_training(names)
    loader = build_train_loader(roidb, ratio_list, ratio_index, 8, 1, 0, seed=0)
    data = next(iter(loader))['data'][0]
    torch.manual_seed(cfg.RNG_SEED)
    model = Generalized_RCNN()
    hooks = [m.register_forward_pre_hook(fold_statistics) for m in model.modules()
             if isinstance(m, AffineChannel2d)]
    with torch.no_grad():
        feats = model.Conv_Body(data)
    for h in hooks:
        h.remove()
    print('initial weights: %d AffineChannel2d set from %s; FPN output std %s'
          % (len(hooks), tuple(data.shape), ' '.join('%.2f' % f.std().item() for f in feats)))
    torch.save({'model': model.state_dict(), 'step': -1}, out)


if __name__ == '__main__':
    main(*sys.argv[1:6])
