"""Time training and inference of the R-50-FPN detectors on synthetic COCO-like images, beside
torchvision's models on the same images.

    python dev/benchmark.py                                   # Mask R-CNN, fp32 and bf16
    python dev/benchmark.py --models mask,faster,keypoint --json bench.json
    python dev/benchmark.py --amp --batch_sizes 2,8,16 --no-peer
    python dev/benchmark.py --device cpu --image_size 96x160 --no-peer ...   (smoke test)

What is measured, for each model of ``--models`` (``mask`` = e2e_mask_rcnn_R-50-FPN_1x,
``faster`` = e2e_faster_rcnn_R-50-FPN_1x, ``keypoint`` = e2e_keypoint_rcnn_R-50-FPN_1x,
``retinanet`` = retinanet_R-50-FPN_1x against torchvision's ``retinanet_resnet50_fpn``):

* **training** images/s of one optimizer step (forward, Detectron's targets and losses,
  backward, SGD with momentum and weight decay at LR 0 so the weights never drift into NaN), at
  2 images per GPU and at the largest batch that fits (doubling from 2 until CUDA runs out of
  memory, up to ``--max_batch``; or the sizes of ``--batch_sizes``), in float32 (TF32 matmuls
  and convolutions) and under bfloat16 autocast (``--amp``); the peak GPU memory of the timed
  steps. The model is configured for each batch size as ``tools/train_net_step.py --bs B``
  configures it (``train_setup.adjust_config_for_batch_size``: IMS_PER_BATCH, the per-batch
  RPN collection size), from random weights (MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False).
  The blob and im_info are on the GPU before timing; the roidb stays on the CPU and the model
  moves what it needs, as in training. One host sync per step (the loss value), as the
  training loop has.
* **inference** ms/image at batch 1 and images/s at batch 8 with ``model.detect`` (eval mode,
  cuDNN autotuning on): the whole test path on the device -- RPN, box head, decoding, class-wise
  NMS, DETECTIONS_PER_IM, then the mask / keypoint heads on the detections; it stops at the
  M x M mask probabilities and keypoint heatmaps (no pasting into the image and no RLE, which
  ``core.test.im_detect_all`` adds on the host). torchvision's timing includes its transform
  (normalisation, a resize by 1.0), mask pasting and keypoint decoding on the GPU.
* **data loader** images/s per worker process (``roi_data.loader`` on the synthetic JPEGs, 2
  images per batch; ``dev/benchmark_loader.py``'s timing).
* unless ``--no-peer``: torchvision's ``maskrcnn_resnet50_fpn`` / ``fasterrcnn_resnet50_fpn`` /
  ``keypointrcnn_resnet50_fpn`` (``weights=None, weights_backbone=None``, 81 or 2 classes:
  BatchNorm trained, all layers trainable, as torchvision builds them without weights) on the
  same images (RGB in [0, 1]), boxes, polygon masks rasterised at full size and keypoints, the
  same batch and precision, and the ratio ours / torchvision.

The images are ``--image_size`` (default 800x1333, so the scale is 1.0 and no resize happens),
``--objects`` objects each (random polygons, COCO-like sizes; 17 visible keypoints each for the
keypoint model) drawn on a textured background and saved as JPEGs in a temporary folder.
Timing: ``--warmup`` untimed steps, then ``--iters`` timed ones (fewer when ``--max_seconds``
runs out, never fewer than 3); the median is reported. On CUDA each step is timed by
``torch.cuda.Event`` pairs on the stream, TF32 is on and cuDNN autotuning off for training (with
it on torchvision's mask head re-tunes every step, its shapes changing) and on for inference.
On the CPU (``--device cpu``, or no GPU) the host clock is used and there is no memory figure.
``--profile`` adds, for the first model, torch.profiler's top operators over 3 training steps at
batch 2 and the source lines of one step's host-device synchronisations. A measurement that fails
(out of memory, an error) is recorded as such and the run goes on; ``--json`` is rewritten after
every measurement.
"""
import logging
import os
import shutil
import sys
import tempfile

import torch

# the harness's modules (dev/bench/); importing them puts pydetectron on sys.path: the copy in
# $PYDETECTRON_LIB when set (dev/benchmark_ab.py, before/after runs), else this checkout's lib/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import loader, options, profilers, report, timing  # noqa: E402
from bench.data import make_synthetic_coco  # noqa: E402


def main(argv=None):
    args = options.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if args.device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.peer:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            sys.exit('benchmark.py: torchvision is not importable; install it or pass --no-peer')
    info = report.machine_info(args.device)
    print('pydetectron benchmark: %s' % ', '.join('%s %s' % kv for kv in info.items()))
    print('images %dx%d, %d objects each; warm-up %d, up to %d timed steps (%.0f s) per number'
          % (args.height, args.width, args.objects, args.warmup, args.iters, args.max_seconds),
          flush=True)
    impls = ['ours'] + (['torchvision'] if args.peer else [])
    data_root = args.keep_data or tempfile.mkdtemp(prefix='pydetectron_bench_')
    results = report.Results(args, info)
    try:
        num_images = max(16, args.max_batch, max(args.batch_sizes or [0]), args.infer_batch)
        specs = {}
        for k, model_name in enumerate(args.models.split(',')):
            kp = model_name == 'keypoint'
            if kp not in specs:
                specs[kp] = make_synthetic_coco(
                    os.path.join(data_root, 'kp' if kp else 'det'), num_images, args.height,
                    args.width, args.objects, kp)
            spec = specs[kp]
            if k == 0 and 'loader' in args.parts and args.loader_workers:
                for rec in loader.measure_loader(spec, model_name, args):
                    results.append(rec)
                    print('  loader, %d workers: %.1f images/s' % (rec['workers'],
                                                                   rec['images_per_s']),
                          flush=True)
            if 'train' in args.parts:
                for precision in args.precisions:
                    sizes = timing.batch_sizes_to_time(model_name, spec, precision, args)
                    while sizes:
                        bs = sizes.pop(0)
                        for impl in impls:
                            rec = timing.measure_training(model_name, impl, spec, bs,
                                                          precision, args)
                            results.append(rec)
                            report.print_training(rec)
                            if (impl == 'ours' and rec['status'] == 'oom' and not sizes
                                    and not args.batch_sizes and bs // 2 > 2):
                                sizes.append(bs // 2)  # fitted in the search, not in timing
                            if impl == 'ours' and rec['status'] != 'ok':
                                break
            if 'infer' in args.parts:
                for impl in impls:
                    try:
                        rec = timing.measure_inference(model_name, impl, spec, args)
                        print('  infer %s %s: %.1f ms/image at batch 1, %.1f images/s at batch '
                              '%d' % (model_name, impl, rec['batch1_ms'],
                                      rec['batchN_images_per_s'], rec['batch']), flush=True)
                    except Exception as e:  # noqa: BLE001 -- report it, time the rest
                        logging.getLogger(__name__).error('infer %s %s failed', model_name, impl,
                                                          exc_info=True)
                        rec = {'part': 'infer', 'model': model_name, 'impl': impl,
                               'status': 'oom' if timing.is_oom(e) else 'error',
                               'error': '%s: %s' % (type(e).__name__, e)}
                        timing.free_memory(args.device)
                    results.append(rec)
            if args.profile and k == 0 and 'train' in args.parts:
                profilers.profile_training(model_name, spec, args)
            if args.profile and 'infer' in args.parts:
                profilers.profile_inference(model_name, spec, args)
    finally:
        if not args.keep_data:
            shutil.rmtree(data_root, ignore_errors=True)
    report.print_tables(results, args.peer)
    if args.json:
        print('\nwrote %s' % args.json)
    return list(results)


if __name__ == '__main__':
    main()
