"""The benchmark models: ours, configured as ``tools/train_net_step.py --bs B`` configures it, and
torchvision's peer with its inputs made from our blob."""
import os

import torch

from bench import ROOT
from pydetectron.core.config import cfg, reset_cfg
from pydetectron.datasets.roidb import combined_roidb_for_training
from pydetectron.engine import config_sequence, train_setup
from pydetectron.modeling.model_builder import Generalized_RCNN
from pydetectron.roi_data.loader import build_train_loader

# name -> (config, torchvision builder, torchvision num_classes)
MODELS = {
    'mask': ('configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml', 'maskrcnn_resnet50_fpn', 81),
    'faster': ('configs/baselines/e2e_faster_rcnn_R-50-FPN_1x.yaml', 'fasterrcnn_resnet50_fpn',
               81),
    'keypoint': ('configs/baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml',
                 'keypointrcnn_resnet50_fpn', 2),
    # torchvision's RetinaNet takes labels < num_classes (81: channel 0 unused, 729 vs our 720)
    'retinanet': ('configs/baselines/retinanet_R-50-FPN_1x.yaml', 'retinanet_resnet50_fpn', 81),
}


def configure(model_name, dataset_spec, batch_size, args, cfg_file=None):
    """The global cfg for ``model_name`` (or the config file ``cfg_file``) trained at
    ``batch_size`` images on one GPU (the tools' config sequence,
    ``engine.config_sequence``)."""
    reset_cfg()
    size, max_size = min(args.height, args.width), max(args.height, args.width)
    return list(config_sequence.configure(
        os.path.join(ROOT, cfg_file or MODELS[model_name][0]), args.set_cfgs,
        overrides=['MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False,
                   'TRAIN.SCALES', (size,), 'TRAIN.MAX_SIZE', max_size,
                   'TEST.SCALE', size, 'TEST.MAX_SIZE', max_size,
                   'TRAIN.USE_FLIPPED', False],
        after_merge=lambda c: train_setup.adjust_config_for_batch_size(
            c, batch_size, 1, 1, num_workers=0, write=lambda *a, **k: None),
        dataset=dataset_spec, split='train', cuda=args.device.type == 'cuda',
        check_values=False))


def load_batch(names, batch_size, device):
    """One loader batch of ``batch_size`` images: (data, im_info) on ``device``, the roidb list
    on the CPU, and the per-image ground truth for torchvision."""
    roidb, ratio_list, ratio_index = combined_roidb_for_training(names)
    loader = build_train_loader(roidb, ratio_list, ratio_index, batch_size, 1, 0, seed=0)
    batch = next(iter(loader))
    return (batch['data'][0].to(device), batch['im_info'][0].to(device), batch['roidb'][0])


def build_ours(device, channels_last=False, compile_body=None):
    """Our model from the cfg, with the tools' --channels_last / --compile applied."""
    from pydetectron.engine.speed_options import apply_speed_options
    torch.manual_seed(0)
    return apply_speed_options(Generalized_RCNN().to(device), channels_last, compile_body)


# ---------------------------------------------------------------------------------------------- #
# torchvision, on the same images and ground truth
# ---------------------------------------------------------------------------------------------- #

def build_peer(model_name, device):
    from torchvision.models import detection
    builder = getattr(detection, MODELS[model_name][1])
    torch.manual_seed(0)
    return builder(weights=None, weights_backbone=None,
                   num_classes=MODELS[model_name][2]).to(device)


def peer_inputs(data, im_info, gt, model_name):
    """torchvision's inputs from our blob: RGB images in [0, 1] cut to their size, targets with
    exclusive box corners, full-size masks and (x, y, v) keypoints, all on the blob's device."""
    import pycocotools.mask as mask_util
    means = torch.tensor(cfg.PIXEL_MEANS, dtype=torch.float32, device=data.device).view(3, 1, 1)
    images, targets = [], []
    for i, entry in enumerate(gt):
        h, w = int(im_info[i, 0]), int(im_info[i, 1])
        images.append(((data[i, :, :h, :w] + means).flip(0) / 255.).contiguous())
        g = entry['gt_boxes'].shape[0]
        boxes = entry['gt_boxes'].clone()
        boxes[:, 2:] += 1  # Detectron's inclusive x2, y2 -> torchvision's exclusive ones
        t = {'boxes': boxes.to(data.device),
             'labels': entry['gt_classes'][:g].to(data.device)}
        if model_name == 'mask':
            rles = [mask_util.merge(mask_util.frPyObjects([p.tolist() for p in segm], h, w))
                    for segm in entry['segms'][:g]]
            t['masks'] = torch.from_numpy(
                mask_util.decode(rles).transpose(2, 0, 1).copy()).to(data.device)
        if model_name == 'keypoint':
            t['keypoints'] = entry['gt_keypoints'][:g].transpose(1, 2).contiguous().to(
                data.device)
        targets.append(t)
    return images, targets
