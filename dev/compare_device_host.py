#!/usr/bin/env python
"""The test path's post-processing on the model's device against Detectron's host path, on real
photos: are the results still Detectron's?

For each image the network runs once (``core.test.im_detect_bbox``); then
  boxes  the device path (``core.test.box_results_for_images``: thresholds, class-wise NMS and
         the per-image limit batched on the device) against Detectron's numpy path
         (``core.test.box_results_with_nms_and_limit`` on host copies of the same scores and
         boxes);
  masks  the mask head once, on the host path's detections; pasted, thresholded and encoded on
         the device (``core.mask_results.segm_results``) against Detectron's per-mask cv2 loop
         (``core.test.segm_results``).
It prints one JSON line per image and a summary: detections of each path, the rows that differ,
the largest box and score differences, and for each detection's two masks whether they are
identical, the pixels set in one only, and their IoU. Random weights give mask probabilities
near the 0.5 threshold everywhere, where one rounding step flips a pixel: trained weights
(``--weights``) show what a user sees.

    python dev/compare_device_host.py --max-images 20               # a CUDA model
    python dev/compare_device_host.py --device cpu --scale 320 --max-size 533 --max-images 3

Default model: Detectron's e2e_mask_rcnn_R-50-FPN_1x config with random weights and
TEST.SCORE_THRESH 0 (every image gets DETECTIONS_PER_IM detections); ``--weights`` loads trained
ones (a Detectron .pkl or a checkpoint), ``--cfg`` another config.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_test_net import default_dataset  # noqa: E402  (coco_mini val2017)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cfg', default=os.path.join(ROOT, 'configs', 'baselines',
                                                 'e2e_mask_rcnn_R-50-FPN_1x.yaml'))
    p.add_argument('--weights', default=None, help='trained weights (default: random ones)')
    p.add_argument('--dataset', default=None,
                   help='coco_json:ANNOTATIONS:IMAGE_DIR (default: coco_mini val2017)')
    p.add_argument('--max-images', type=int, default=20)
    p.add_argument('--scale', type=int, default=800)
    p.add_argument('--max-size', type=int, default=1333)
    p.add_argument('--score-thresh', type=float, default=0.0)
    p.add_argument('--device', default='cuda')
    p.add_argument('--json', default=None, help='write the summary here')
    return p.parse_args(argv)


def _model(args, device):
    import torch
    from pydetectron.core.config import cfg
    from pydetectron.engine import config_sequence
    from pydetectron.modeling.model_builder import Generalized_RCNN
    keys = ['TEST.SCALE', args.scale, 'TEST.MAX_SIZE', args.max_size,
            'TEST.SCORE_THRESH', args.score_thresh]
    if args.weights is None:
        keys += ['MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False]
    names = config_sequence.configure(args.cfg, [], overrides=keys, dataset=args.dataset,
                                      split='test', cuda=device.type == 'cuda')
    torch.manual_seed(0)
    model = Generalized_RCNN()
    if args.weights:
        from pydetectron.engine.initial_weights import load_weights
        load_weights(model, args.weights, flag='--weights', kind=None)
    return names[0], model.to(device).eval(), cfg


def _mask_differences(a, b):
    """Per pair of RLEs: (IoU -- 1 for two empty masks --, pixels set in one mask only)."""
    import numpy as np
    import pycocotools.mask as mask_util
    out = []
    for x, y in zip(a, b):
        mx, my = mask_util.decode(x).astype(bool), mask_util.decode(y).astype(bool)
        union = np.logical_or(mx, my).sum()
        out.append((np.logical_and(mx, my).sum() / union if union else 1.0,
                    int(np.logical_xor(mx, my).sum())))
    return out


def compare_image(model, im, cfg):
    """-> dict of the differences of one image's two paths."""
    import numpy as np
    import torch
    from pydetectron.core import mask_results
    from pydetectron.core import test as test_mod
    with torch.no_grad():
        scores, boxes, im_scales, blob_conv = test_mod.im_detect_bbox(
            model, [im], cfg.TEST.SCALE, cfg.TEST.MAX_SIZE)
        dev = test_mod.box_results_for_images(scores, boxes)[0]
        host = test_mod.box_results_with_nms_and_limit(scores[0].cpu().numpy(),
                                                       boxes[0].cpu().numpy())
    rec = {'detections_device': int(len(dev[0])), 'detections_host': int(len(host[0]))}
    per_class = [(len(dev[2][j]), len(host[2][j])) for j in range(1, cfg.MODEL.NUM_CLASSES)]
    rec['classes_with_other_counts'] = sum(a != b for a, b in per_class)
    if len(dev[0]) == len(host[0]) and rec['classes_with_other_counts'] == 0:
        rec['max_box_diff'] = float(np.abs(dev[1] - host[1]).max()) if len(dev[0]) else 0.0
        rec['max_score_diff'] = float(np.abs(dev[0] - host[0]).max()) if len(dev[0]) else 0.0
        rec['rows_differing'] = int((np.abs(dev[1] - host[1]).max(axis=1) > 1e-3).sum()) \
            if len(dev[0]) else 0
    if cfg.MODEL.MASK_ON and len(host[0]):
        det_boxes = host[1]
        with torch.no_grad():
            masks = test_mod.im_detect_mask(model, im_scales, [det_boxes], blob_conv)[0]
            masks_t = torch.as_tensor(masks).to(next(model.parameters()).device)
            on_device = mask_results.segm_results(
                host[2], masks_t, det_boxes, im.shape[0], im.shape[1], cfg.MRCNN.RESOLUTION,
                cfg.MRCNN.CLS_SPECIFIC_MASK, cfg.MRCNN.THRESH_BINARIZE)
        on_host = test_mod.segm_results(host[2], masks_t.cpu().numpy(), det_boxes,
                                        im.shape[0], im.shape[1])
        diffs = [d for j in range(1, cfg.MODEL.NUM_CLASSES)
                 for d in _mask_differences(on_device[j], on_host[j])]
        ious = np.array([d[0] for d in diffs])
        rec.update(masks=len(diffs), masks_identical=int(sum(d[1] == 0 for d in diffs)),
                   pixels_differing=int(sum(d[1] for d in diffs)),
                   pixels=int(len(diffs) * im.shape[0] * im.shape[1]),
                   mask_iou_min=float(ious.min()), mask_iou_mean=float(ious.mean()))
    return rec


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.join(ROOT, 'lib'))
    import numpy as np
    import torch
    from pydetectron.core.test_engine import get_roidb_and_dataset
    from pydetectron.utils.image_io import read_image
    args.dataset = args.dataset or default_dataset()
    device = torch.device(args.device)
    dataset, model, cfg = _model(args, device)
    roidb = get_roidb_and_dataset(dataset, None, (0, args.max_images))[0]
    records = []
    for entry in roidb:
        rec = compare_image(model, read_image(entry['image']), cfg)
        rec['image'] = os.path.basename(entry['image'])
        records.append(rec)
        print(json.dumps(rec), flush=True)
    ious = [r for r in records if 'masks' in r]
    summary = {
        'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
        'images': len(records),
        'detections_device': sum(r['detections_device'] for r in records),
        'detections_host': sum(r['detections_host'] for r in records),
        'images_with_other_detections': sum(
            r['detections_device'] != r['detections_host'] or r['classes_with_other_counts'] > 0
            for r in records),
        'rows_differing': sum(r.get('rows_differing', 0) for r in records),
        'max_box_diff': max([r.get('max_box_diff', 0.0) for r in records] or [0.0]),
        'max_score_diff': max([r.get('max_score_diff', 0.0) for r in records] or [0.0]),
    }
    if ious:
        summary.update(
            masks=sum(r['masks'] for r in ious),
            masks_identical=sum(r['masks_identical'] for r in ious),
            pixels_differing_per_million=1e6 * sum(r['pixels_differing'] for r in ious)
            / max(1, sum(r['pixels'] for r in ious)),
            mask_iou_min=min(r['mask_iou_min'] for r in ious),
            mask_iou_mean=float(np.average([r['mask_iou_mean'] for r in ious],
                                           weights=[r['masks'] for r in ious])))
    print(json.dumps(dict(summary, summary=True)), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'summary': summary, 'images': records}, f, indent=1)
    return summary


if __name__ == '__main__':
    main()
