#!/usr/bin/env python
"""test_net's own path on real photos against torchvision's evaluation loop, paired in turns.

Ours: ``core.test_engine.test_net`` -- what ``tools/test_net.py`` runs: images read (ahead, in
threads), blobs, the network, class-wise NMS, mask pasting and RLE encoding, ``detections.pkl``
written -- on a COCO-format dataset (default: coco_mini val2017, 79 photos) at TEST.SCALE /
TEST.MAX_SIZE 800 / 1333 with a Mask R-CNN R-50-FPN (Detectron's config) of random weights and
TEST.SCORE_THRESH 0, so every image gets TEST.DETECTIONS_PER_IM (100) detections, each with a mask.
Beside it, the model alone: ``model.detect`` on the same images' blobs, prepared beforehand.

Torchvision: ``maskrcnn_resnet50_fpn`` (random weights, score threshold 0, 100 detections per
image, min/max size 800 / 1333), the loop of its reference evaluation: read the image with cv2,
to an RGB float tensor on the GPU, forward, masks > 0.5 and boxes brought to the host, each mask
RLE-encoded with pycocotools.

Each round times every implementation over all the images (after a warm-up pass), in turns;
the report gives images/s per round and the peak GPU memory. ``--lib DIR`` imports pydetectron
from another checkout's ``lib`` (an A/B of two versions of the code).

    python dev/benchmark_test_net.py --rounds 3 --json test_net.json

CPU rehearsal (torchvision's compiled ops built for another torch: dev/tv_cpu_shim.py, never
for numbers):

    PYDETECTRON_TV_SHIM=1 PYTHONPATH=/tmp/tvpkg python dev/benchmark_test_net.py --device cpu \
        --scale 200 --max-size 333 --max-images 3 --rounds 1 --json x.json
"""
import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataset', default=None,
                   help='coco_json:ANNOTATIONS:IMAGE_DIR (default: ../shared coco_mini val2017)')
    p.add_argument('--impl', default='ours,torchvision', help='comma-separated: ours, torchvision')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--max-images', type=int, default=None, help='the first N images only')
    p.add_argument('--scale', type=int, default=800)
    p.add_argument('--max-size', type=int, default=1333)
    p.add_argument('--ims-per-batch', type=int, default=1, help='TEST.IMS_PER_BATCH (ours)')
    p.add_argument('--lib', default=None, help="a checkout's lib/ to import pydetectron from")
    p.add_argument('--label', default=None, help='name of "ours" in the report')
    p.add_argument('--json', default=None, help='write the records here')
    p.add_argument('--device', default='cuda')
    p.add_argument('--cudnn-benchmark', action='store_true',
                   help="cuDNN autotuning on (test_net leaves it off: one search per blob size)")
    p.add_argument('--channels_last', action='store_true', help="the tools' --channels_last")
    p.add_argument('--compile', nargs='?', const='default', default=None, metavar='MODE',
                   help="the tools' --compile [MODE] (ours; the first pass pays the compilation)")
    p.add_argument('--shape_buckets', type=int, default=None, metavar='N',
                   help="the tools' --shape_buckets N (ours; a CUDA-graph mode's default: 160)")
    p.add_argument('--cuda_graphs', action=argparse.BooleanOptionalAction, default=True,
                   help="test_net.py's --cuda_graphs / --no-cuda_graphs (ours)")
    p.add_argument('--front_graphs', action='store_true', help="test_net.py's --front_graphs")
    p.add_argument('--pipelines', type=int, default=None,
                   help="batches test_net keeps in flight (default: test_net's choice)")
    return p.parse_args(argv)


def default_dataset():
    data = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'data', 'coco_mini'))
    if not os.path.isdir(data):
        data = os.path.join(ROOT, '.gpu_data', 'coco_mini')
    return 'coco_json:%s:%s' % (os.path.join(data, 'annotations', 'instances_val2017.json'),
                                os.path.join(data, 'images', 'val2017'))


def _sync(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class Ours:
    def __init__(self, args):
        import torch
        from pydetectron.core.config import (
            assert_and_infer_cfg, cfg, merge_cfg_from_file, merge_cfg_from_list, reset_cfg)
        from pydetectron.datasets import dataset_catalog
        from pydetectron.modeling.model_builder import Generalized_RCNN
        self.device = torch.device(args.device)
        reset_cfg()
        yaml = os.path.join(ROOT, 'configs', 'baselines', 'e2e_mask_rcnn_R-50-FPN_1x.yaml')
        keys = ['MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', False, 'TEST.SCALE', args.scale,
                'TEST.MAX_SIZE', args.max_size, 'TEST.SCORE_THRESH', 0.0,
                'TEST.IMS_PER_BATCH', args.ims_per_batch]
        try:
            from pydetectron.engine import config_sequence
        except ImportError:      # an older checkout (--lib): the sequence written out
            merge_cfg_from_file(yaml)
            merge_cfg_from_list(keys)
            names, num_classes = dataset_catalog.resolve_dataset_arg(args.dataset,
                                                                     training=False)
            cfg.TEST.DATASETS, cfg.MODEL.NUM_CLASSES = tuple(names), num_classes
            cfg.CUDA = self.device.type == 'cuda'
            assert_and_infer_cfg()
        else:
            from pydetectron.engine.compile_shapes import set_shape_buckets
            names = config_sequence.configure(
                yaml, [], overrides=keys, dataset=args.dataset, split='test',
                cuda=self.device.type == 'cuda',
                after_merge=lambda c: set_shape_buckets(c, args))   # as test_net.py does
        self.dataset = names[0]
        torch.manual_seed(0)
        self.model = Generalized_RCNN().to(self.device).eval()
        if args.channels_last or args.compile:
            from pydetectron.engine.speed_options import apply_speed_options
            apply_speed_options(self.model, args.channels_last, args.compile)
        self.out_dir = tempfile.mkdtemp(prefix='bench_test_net_')
        self.args = argparse.Namespace(quiet=True, vis=False, cuda=cfg.CUDA,
                                       cuda_graphs=args.cuda_graphs,
                                       front_graphs=args.front_graphs)
        self.max_images = args.max_images

    def images(self):
        from pydetectron.core.test_engine import get_roidb_and_dataset
        roidb = get_roidb_and_dataset(self.dataset, None, self._range())[0]
        return [e['image'] for e in roidb]

    def _range(self):
        return None if self.max_images is None else (0, self.max_images)

    def run(self):
        """One test_net pass over the dataset -> (images, detections per image)."""
        from pydetectron.core.test_engine import test_net
        all_boxes, all_segms, _ = test_net(self.args, self.dataset, None, self.out_dir,
                                           ind_range=self._range(), model=self.model)
        n = len(all_boxes[1])
        dets = sum(len(all_boxes[j][i]) for j in range(1, len(all_boxes)) for i in range(n))
        masks = sum(len(all_segms[j][i]) for j in range(1, len(all_segms)) for i in range(n))
        assert masks == dets, (masks, dets)
        return n, dets / float(n)

    def model_only(self, paths):
        """Seconds of ``model.detect`` over the images' blobs (prepared before timing)."""
        import cv2
        import torch
        from pydetectron.core.config import cfg
        from pydetectron.core.test import get_image_blob
        blobs = []
        for p in paths:
            im = cv2.imread(p)
            data, im_info, _ = get_image_blob([im], cfg.TEST.SCALE, cfg.TEST.MAX_SIZE)
            blobs.append((torch.from_numpy(data).to(self.device),
                          torch.from_numpy(im_info).to(self.device), [im.shape[:2]]))
        with torch.no_grad():
            for data, im_info, sizes in blobs[:3]:
                self.model.detect(data, im_info, sizes)
            _sync(self.device)
            t = time.perf_counter()
            for data, im_info, sizes in blobs:
                self.model.detect(data, im_info, sizes)
            _sync(self.device)
        return time.perf_counter() - t


class Torchvision:
    def __init__(self, args):
        import torch
        import torchvision
        self.device = torch.device(args.device)
        torch.manual_seed(0)
        self.model = torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0,
            box_detections_per_img=100, min_size=args.scale, max_size=args.max_size)
        self.model.to(self.device).eval()
        self.paths = None

    def run(self):
        import cv2
        import numpy as np
        import pycocotools.mask as mask_util
        import torch
        dets = 0
        with torch.no_grad():
            for p in self.paths:
                im = cv2.imread(p)
                t = torch.from_numpy(im[:, :, ::-1].copy()).to(self.device)
                t = t.permute(2, 0, 1).float().div_(255.0)
                out = self.model([t])[0]
                boxes = out['boxes'].cpu().numpy()
                out['scores'].cpu().numpy()
                masks = (out['masks'] > 0.5).cpu().numpy()
                rles = [mask_util.encode(np.array(m[0, :, :, np.newaxis], dtype=np.uint8,
                                                  order='F'))[0] for m in masks]
                assert len(rles) == len(boxes)
                dets += len(boxes)
        return len(self.paths), dets / float(len(self.paths))


def main(argv=None):
    args = parse_args(argv)
    if args.lib:
        sys.path.insert(0, os.path.abspath(args.lib))
    else:
        sys.path.insert(0, os.path.join(ROOT, 'lib'))
    if os.environ.get('PYDETECTRON_TV_SHIM') == '1':
        # CPU rehearsal only (torchvision's compiled ops built for another torch): stand-in ops
        # from dev/tv_cpu_shim.py, registered before torchvision is imported; never on the GPU
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import tv_cpu_shim
        tv_cpu_shim.maybe_install()
    import torch
    args.dataset = args.dataset or default_dataset()
    if args.pipelines is not None:
        from pydetectron.core import test_engine
        test_engine._pipelines = lambda model: args.pipelines
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    impls = {}
    names = args.impl.split(',')
    if 'ours' in names:
        from pydetectron.utils.errors import UserInputError
        try:
            impls['ours'] = Ours(args)
        except UserInputError as e:     # a bad --shape_buckets, --compile, --dataset: one line
            print('benchmark_test_net.py: error: %s' % e, file=sys.stderr)
            raise SystemExit(2)
    paths = impls['ours'].images() if 'ours' in impls else None
    if 'torchvision' in names:
        tv = Torchvision(args)
        if paths is None:
            from pydetectron.datasets import dataset_catalog  # noqa: F401  (sys.path set)
            raise SystemExit('--impl torchvision alone: give ours too (it lists the images)')
        tv.paths = paths
        impls['torchvision'] = tv
    device = torch.device(args.device)
    label = {'ours': args.label or 'ours'}
    records = []
    for name, impl in impls.items():     # warm-up pass (cudnn, allocator, caches), reported
        _sync(device)                     # as round -1: what a first pass over new sizes costs
        t = time.perf_counter()
        n, _ = impl.run()
        _sync(device)
        dt = time.perf_counter() - t
        print(json.dumps({'impl': label.get(name, name), 'round': -1, 'images': n,
                          'seconds': dt, 'ms_per_image': 1000 * dt / n}), flush=True)
    for r in range(args.rounds):
        for name, impl in impls.items():
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t = time.perf_counter()
            n, per_image = impl.run()
            _sync(device)
            dt = time.perf_counter() - t
            rec = {'impl': label.get(name, name), 'round': r, 'images': n,
                   'detections_per_image': per_image, 'seconds': dt,
                   'images_per_s': n / dt, 'ms_per_image': 1000 * dt / n}
            if device.type == 'cuda':
                rec['peak_gpu_mib'] = torch.cuda.max_memory_allocated(device) / 2 ** 20
            if name == 'ours':
                rec['model_only_ms_per_image'] = 1000 * impl.model_only(paths) / n
            records.append(rec)
            print(json.dumps(rec), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'device': torch.cuda.get_device_name(device) if device.type == 'cuda'
                       else 'cpu', 'torch': torch.__version__, 'records': records}, f, indent=1)
    return records


if __name__ == '__main__':
    main()
