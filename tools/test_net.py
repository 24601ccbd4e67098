"""Test a model on one or more datasets: detections, COCO metrics, Detectron's copy-paste summary.

    python tools/test_net.py --dataset coco2017 \
        --cfg configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml \
        --load_ckpt Outputs/.../model_final.pth [--multi-gpu-testing] [--vis]
    python tools/test_net.py --dataset coco2017 --cfg CFG --eval_only Outputs/.../detections.pkl

``--dataset`` takes a shorthand (coco2017, keypoints_coco2017, coco2014, shapes, ...), a catalog
name, or ``coco_json:<annotation_file>[:<image_dir>]``. The children of ``--multi-gpu-testing``
call this script again with ``--range``.
"""
import argparse
import os
import sys

import cv2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))

from pydetectron.core.config import cfg  # noqa: E402
from pydetectron.core import test_engine  # noqa: E402
from pydetectron.engine import inference  # noqa: E402
from pydetectron.engine.cli import (  # noqa: E402
    ArgumentParser, check_input_file, check_output_dir, check_set_pairs, positive, run_tool)
from pydetectron.utils.errors import CliError  # noqa: E402
from pydetectron.engine import checkpoint_meta, config_sequence  # noqa: E402
from pydetectron.engine.compile_shapes import set_shape_buckets  # noqa: E402
from pydetectron.engine.speed_options import add_speed_arguments  # noqa: E402
from pydetectron.utils.logging import setup_logging  # noqa: E402

# OpenCL in OpenCV is not thread safe and grabs GPU memory: keep it off.
cv2.ocl.setUseOpenCL(False)


def parse_args(argv=None):
    parser = ArgumentParser(description='Test a Detectron-style model on datasets')
    parser.add_argument('--dataset', help='dataset(s) to test on (shorthand, catalog name, or '
                        'coco_json:<annotation_file>[:<image_dir>]); default: TEST.DATASETS')
    parser.add_argument('--cfg', dest='cfg_file',
                        help='config file (YAML); default: the config saved in --load_ckpt')
    parser.add_argument('--load_ckpt', help='checkpoint (.pth, pydetectron or Detectron.pytorch) '
                        'to test; default: TEST.WEIGHTS of the config')
    parser.add_argument('--load_detectron', help='Detectron weights (.pkl) to test')
    parser.add_argument('--output_dir', help='where results go (default: <checkpoint dir>/../test)')
    parser.add_argument('--set', dest='set_cfgs', default=[], nargs='*',
                        help='config key/value pairs overriding the config file')
    parser.add_argument('--range', type=int, nargs=2, metavar=('START', 'END'),
                        help='infer only images [START, END) (child processes use it)')
    parser.add_argument('--multi-gpu-testing', dest='multi_gpu_testing', action='store_true',
                        help='split the dataset over the GPUs (or --nproc CPU processes)')
    parser.add_argument('--nproc', type=positive(int), default=None,
                        help='processes for --multi-gpu-testing without CUDA (default NUM_GPUS)')
    parser.add_argument('--vis', action='store_true', help='draw detections into <output_dir>/vis')
    parser.add_argument('--eval_only', nargs='?', const='', default=None, metavar='DET_FILE',
                        help='evaluate saved detections (default <output_dir>/detections.pkl) '
                             'without running the model')
    parser.add_argument('--no_cuda', dest='cuda', action='store_false', help='run on the CPU')
    add_speed_arguments(parser)
    parser.add_argument('--cuda_graphs', action=argparse.BooleanOptionalAction, default=True,
                        help='on a GPU, replay the conv body as CUDA graphs, one per blob size '
                        '(the same kernels, one launch; on by default)')
    parser.add_argument('--front_graphs', action='store_true',
                        help='with --cuda_graphs at one image a batch: replay the whole front -- '
                        'conv body, RPN, proposals (padded: no host synchronisation), box head -- '
                        'as one CUDA graph per blob size, each image\'s front queued on a side '
                        'stream before the previous image\'s results are made (off by default: '
                        'timed only with its graph capture failing, 12.8 against 14.3 ms an image '
                        'on an H100, BENCHMARK.md; the graphed front has not run on a GPU yet)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def main(argv=None):
    logger = setup_logging(__name__)
    args = parse_args(argv)
    logger.info('Called with args: %s', args)

    evaluating_file = args.eval_only is not None
    if args.load_ckpt and args.load_detectron:
        raise CliError('give at most one of --load_ckpt and --load_detectron')
    if args.range is not None and not 0 <= args.range[0] <= args.range[1]:
        raise CliError('--range {} {}: expected 0 <= START <= END'.format(*args.range))
    # Inputs first (seconds), before any dataset or model is built (minutes).
    check_input_file(args.cfg_file, '--cfg')
    check_set_pairs(args.set_cfgs)
    check_input_file(args.load_ckpt, '--load_ckpt')
    check_input_file(args.load_detectron, '--load_detectron')
    if args.eval_only:
        check_input_file(args.eval_only, '--eval_only')

    meta = checkpoint_meta.read_metadata(args.load_ckpt) if args.load_ckpt else {}

    def weights_and_output_dir(cfg):
        # the weights may come from TEST.WEIGHTS (the config and --set are merged by now)
        nonlocal meta
        meta = checkpoint_meta.test_weights(args, meta, needs_weights=not evaluating_file)
        set_shape_buckets(cfg, args)
        if args.output_dir is None:
            weights = args.load_ckpt or args.load_detectron or args.eval_only
            if not weights:
                raise CliError('give --output_dir')
            args.output_dir = os.path.join(
                os.path.dirname(os.path.dirname(os.path.abspath(weights))), 'test')
            logger.info('Automatically set output directory to %s', args.output_dir)
        check_output_dir(args.output_dir)

    config_sequence.configure(
        args.cfg_file, args.set_cfgs,
        saved=lambda: checkpoint_meta.apply_checkpoint_config(meta, args.load_ckpt),
        after_merge=weights_and_output_dir, dataset=args.dataset, split='test',
        extra=['VIS', True] if args.vis else (), cuda=args.cuda)
    if meta.get('classes'):
        # never evaluate a model on a dataset of other classes
        from pydetectron.datasets import dataset_catalog
        for name in cfg.TEST.DATASETS:
            classes, _ = dataset_catalog.get_class_and_keypoint_names(name)
            checkpoint_meta.check_dataset_classes(meta['classes'], classes, args.load_ckpt,
                                                  args.dataset or name)

    if evaluating_file:
        det_file = args.eval_only or os.path.join(args.output_dir, 'detections.pkl')
        for dataset_name in cfg.TEST.DATASETS:
            test_engine.evaluate_detections_file(det_file, dataset_name, args.output_dir)
        return

    args.test_net_file = os.path.abspath(__file__)
    inference.run_inference(args, ind_range=args.range,
                            multi_gpu_testing=args.multi_gpu_testing,
                            check_expected_results=True)


if __name__ == '__main__':
    sys.exit(run_tool(main, prog='test_net.py'))
