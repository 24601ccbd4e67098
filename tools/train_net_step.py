"""Train a Detectron model step by step (Faster / Mask / Keypoint R-CNN), on GPUs or the CPU.

    python tools/train_net_step.py --dataset coco2017 \
        --cfg configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml --bs 2 --output_dir Outputs/mrcnn
    python tools/train_net_step.py --dataset shapes --cfg configs/getting_started/... --no_cuda
    torchrun --nproc_per_node=8 tools/train_net_step.py --dataset coco2017 --cfg ... --bs 16

The final model is tested on TEST.DATASETS after training (Detectron's default; ``--skip-test``
to skip), and every N steps with ``--eval_period N``; ``tools/plot_metrics.py <output_dir>`` draws
the loss and AP curves of ``metrics.jsonl``.

Run it again with the same ``--output_dir`` to continue from the newest checkpoint
(TRAIN.AUTO_RESUME), or ``--resume --load_ckpt <output_dir>/ckpt/model_step<N>.pth``.
Ctrl-C / SIGTERM save the last finished step and exit with 130 / 143; a NaN loss saves the last
good step and exits with 3; a missing file, a bad config key or an unusable checkpoint exits
with 2 and a message. The work is done by ``pydetectron.engine.launch``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))

import cv2  # noqa: E402

from pydetectron.engine.cli import (  # noqa: E402
    ArgumentParser, non_negative_int, positive, run_tool)
from pydetectron.engine.speed_options import add_speed_arguments  # noqa: E402

cv2.setNumThreads(0)  # OpenCV's threads in DataLoader workers can deadlock (pytorch issue 1355)


def parse_args(argv=None):
    parser = ArgumentParser(description='Train a X-RCNN network')
    parser.add_argument('--dataset', help='training dataset: a shorthand (coco2017, '
                        'keypoints_coco2017, shapes, keypoints_shapes, ...), a catalog name, a '
                        'COCO json or coco_json:<json>[:<image dir>] (default: TRAIN.DATASETS)')
    parser.add_argument('--cfg', dest='cfg_file', required=True, help='config file (YAML)')
    parser.add_argument('--set', dest='set_cfgs', default=[], nargs='+',
                        help='config keys to set: KEY VALUE [KEY VALUE ...]')
    parser.add_argument('--disp_interval', default=20, type=positive(int),
                        help='display training info every N steps')
    parser.add_argument('--no_cuda', dest='cuda', action='store_false',
                        help='train on the CPU even when a GPU is present')
    # Optimization: these override the config file and --set (None: keep the config's)
    parser.add_argument('--bs', dest='batch_size', type=positive(int),
                        help='images per iteration over all devices (default: the config\'s '
                        'NUM_GPUS x TRAIN.IMS_PER_BATCH); LR and schedule are adapted')
    parser.add_argument('--nw', dest='num_workers', type=non_negative_int,
                        help='data loading worker processes (DATA_LOADER.NUM_THREADS)')
    parser.add_argument('--iter_size', default=1, type=positive(int),
                        help='forward/backward passes per update, gradients summed (as in Caffe)')
    parser.add_argument('--o', dest='optimizer', choices=('SGD', 'Adam'),
                        help='optimizer (SOLVER.TYPE)')
    parser.add_argument('--lr', type=positive(float), help='base learning rate (SOLVER.BASE_LR)')
    parser.add_argument('--lr_decay_gamma', type=positive(float), help='LR decay (SOLVER.GAMMA)')
    parser.add_argument('--start_step', default=0, type=non_negative_int,
                        help='first step (0-indexed) when not resuming')
    parser.add_argument('--resume', action='store_true',
                        help='resume model, optimizer, step, LR and data order from --load_ckpt, '
                        'or from the newest checkpoint of --output_dir')
    parser.add_argument('--no_save', action='store_true', help='save nothing')
    parser.add_argument('--load_ckpt', help='checkpoint (.pth) to load: of pydetectron or of '
                        'Detectron.pytorch (default: TRAIN.WEIGHTS of the config)')
    parser.add_argument('--load_detectron', help='Detectron weights (.pkl) to load')
    parser.add_argument('--strict_class_heads', action='store_true',
                        help='refuse initial weights whose class-specific layers (cls_score, '
                        'bbox_pred, mask_fcn_logits, ...) have another shape, instead of '
                        'fine-tuning with those layers freshly initialised (the default, with a '
                        'warning naming them)')
    parser.add_argument('--allow_random_frozen_bn', action='store_true',
                        help='train a frozen-BN (AffineChannel) body from random weights '
                        '(TRAIN.ALLOW_RANDOM_FROZEN_BN); refused otherwise, as it cannot learn')
    parser.add_argument('--use_tfboard', action='store_true',
                        help='write TensorBoard scalars to the output directory')
    parser.add_argument('--amp', action='store_true',
                        help='bfloat16 autocast in the forward pass (CUDA, or CPU)')
    add_speed_arguments(parser, training=True)
    parser.add_argument('--cuda_graphs', action=argparse.BooleanOptionalAction, default=True,
                        help="replay the conv body's forward and backward as CUDA graphs, a pair "
                        'per blob shape captured the second time a shape comes, for the first 16 '
                        "shapes within a quarter of the GPU's memory (one GPU in the process, no "
                        '--compile; on by default, --no-cuda_graphs: eager)')
    parser.add_argument('--seed', type=int, help='random seed (RNG_SEED)')
    parser.add_argument('--output_dir', help='the run folder: ckpt/, config.yaml, log.txt, '
                        'metrics.jsonl, classes.txt, eval/, TensorBoard events '
                        '(default: OUTPUT_DIR/<cfg name>/<date>_<host>_step)')
    parser.add_argument('--skip-test', '--skip_test', dest='skip_test', action='store_true',
                        help='do not test the final model on TEST.DATASETS after training '
                        '(Detectron tests it by default)')
    parser.add_argument('--eval_period', type=int, default=None, metavar='N',
                        help='evaluate the model on TEST.DATASETS every N steps and after the '
                        'last one (default: TEST.EVAL_PERIOD, 0 = off); metrics go to the '
                        'console, metrics.jsonl and TensorBoard')
    return parser.parse_args(argv)


def main(argv=None):
    """Train; a bad file, flag, key or name ends in one line on stderr and returns 2."""
    from pydetectron.engine import launch
    return run_tool(lambda a: launch.main(parse_args(a)), argv, prog='train_net_step.py')


if __name__ == '__main__':
    sys.exit(main())
