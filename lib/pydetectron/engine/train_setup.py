"""Preparing a training run: the seed's adaptive config changes, run names, weights-file checks.

Adaptive changes (Detectron.pytorch ``train_net_step.py``), applied after the YAML and ``--set``
and before ``assert_and_infer_cfg``. A config describes its schedule for
``NUM_GPUS x TRAIN.IMS_PER_BATCH`` images per iteration (the *original batch size*); the run
uses ``--bs`` images per iteration over ``num_gpus`` devices, ``--iter_size`` iterations per
update:
  * NUM_GPUS := num_gpus; TRAIN.IMS_PER_BATCH := bs / num_gpus
  * SOLVER.BASE_LR *= bs / original            (linear scaling with the per-pass batch: the
                                               iter_size passes *sum* their gradients)
  * SOLVER.STEPS, SOLVER.MAX_ITER *= original / (bs x iter_size), rounded to the nearest int
  * FPN.RPN_COLLECT_SCALE := IMS_PER_BATCH / original IMS_PER_BATCH (FPN Faster R-CNN: the
    per-minibatch post-NMS top-N follows the images per GPU)
  * then ``--o``, ``--lr``, ``--lr_decay_gamma`` override SOLVER.TYPE / BASE_LR / GAMMA as given.
Each change is printed. Under torchrun each process is one of Detectron's GPUs
(``num_gpus`` = world size, ``--bs`` the total over all processes), so the LR follows the world
size exactly as it follows the batch size.
"""
import datetime
import logging
import os
import socket

from pydetectron.utils.errors import CliError

logger = logging.getLogger(__name__)


def adjust_config_for_batch_size(cfg, batch_size=None, iter_size=1, num_gpus=1, num_workers=None,
                                 optimizer=None, lr=None, lr_decay_gamma=None, write=print):
    """Apply the adaptive changes to ``cfg`` (mutable); returns the batch size used.

    ``batch_size`` None keeps the config's original batch size (NUM_GPUS x IMS_PER_BATCH).
    """
    original_batch_size = cfg.NUM_GPUS * cfg.TRAIN.IMS_PER_BATCH
    original_ims_per_batch = cfg.TRAIN.IMS_PER_BATCH
    original_num_gpus = cfg.NUM_GPUS
    if batch_size is None:
        batch_size = original_batch_size
    if batch_size < 1 or iter_size < 1 or num_gpus < 1:
        raise CliError('--bs ({}), --iter_size ({}) and the device count ({}) must be >= 1'
                         .format(batch_size, iter_size, num_gpus))
    if batch_size % num_gpus != 0:
        raise CliError('--bs {} is not a multiple of the number of devices {} (each device '
                         'gets bs / devices images)'.format(batch_size, num_gpus))
    cfg.NUM_GPUS = num_gpus
    cfg.TRAIN.IMS_PER_BATCH = batch_size // num_gpus
    effective_batch_size = iter_size * batch_size
    write('effective_batch_size = batch_size * iter_size = %d * %d' % (batch_size, iter_size))
    write('Adaptive config changes:')
    write('    effective_batch_size: %d --> %d' % (original_batch_size, effective_batch_size))
    write('    NUM_GPUS:             %d --> %d' % (original_num_gpus, cfg.NUM_GPUS))
    write('    IMS_PER_BATCH:        %d --> %d' % (original_ims_per_batch, cfg.TRAIN.IMS_PER_BATCH))

    # iter_size > 1 accumulates (sums) gradients, so the LR follows batch_size, not the
    # effective batch size.
    old_base_lr = cfg.SOLVER.BASE_LR
    cfg.SOLVER.BASE_LR *= batch_size / original_batch_size
    write('Adjust BASE_LR linearly according to batch_size change:\n'
          '    BASE_LR: {} --> {}'.format(old_base_lr, cfg.SOLVER.BASE_LR))

    step_scale = original_batch_size / effective_batch_size
    old_steps, old_max_iter = list(cfg.SOLVER.STEPS), cfg.SOLVER.MAX_ITER
    new_steps = [int(x * step_scale + 0.5) for x in cfg.SOLVER.STEPS]
    cfg.SOLVER.STEPS = type(cfg.SOLVER.STEPS)(new_steps)
    cfg.SOLVER.MAX_ITER = int(cfg.SOLVER.MAX_ITER * step_scale + 0.5)
    write('Adjust SOLVER.STEPS and SOLVER.MAX_ITER linearly based on effective_batch_size change:\n'
          '    SOLVER.STEPS: {} --> {}\n'
          '    SOLVER.MAX_ITER: {} --> {}'.format(old_steps, new_steps, old_max_iter,
                                                  cfg.SOLVER.MAX_ITER))

    if cfg.FPN.FPN_ON and cfg.MODEL.FASTER_RCNN and 'RPN_COLLECT_SCALE' in cfg.FPN:
        cfg.FPN.RPN_COLLECT_SCALE = cfg.TRAIN.IMS_PER_BATCH / original_ims_per_batch
        write('Scale FPN rpn_proposals collect size directly propotional to the change of '
              'IMS_PER_BATCH:\n    cfg.FPN.RPN_COLLECT_SCALE: {}'.format(cfg.FPN.RPN_COLLECT_SCALE))

    if num_workers is not None:
        cfg.DATA_LOADER.NUM_THREADS = num_workers
    write('Number of data loading threads: %d' % cfg.DATA_LOADER.NUM_THREADS)

    if optimizer is not None:
        cfg.SOLVER.TYPE = optimizer
    if lr is not None:
        cfg.SOLVER.BASE_LR = lr
    if lr_decay_gamma is not None:
        cfg.SOLVER.GAMMA = lr_decay_gamma
    return batch_size


def snapshot_period(cfg):
    """Steps between checkpoints: TRAIN.SNAPSHOT_ITERS / NUM_GPUS (Detectron's rule), >= 1."""
    return max(1, int(cfg.TRAIN.SNAPSHOT_ITERS / cfg.NUM_GPUS))


def get_run_name():
    """The seed's run name: start time and host, e.g. ``Mar07-14-03-59_myhost_step``."""
    return datetime.datetime.now().strftime('%b%d-%H-%M-%S') + '_' + socket.gethostname() + '_step'


def get_output_dir(cfg, cfg_file, run_name):
    """``<OUTPUT_DIR>/<cfg file stem>/<run_name>`` (the seed's layout)."""
    stem = os.path.splitext(os.path.basename(cfg_file))[0]
    return os.path.join(cfg.OUTPUT_DIR, stem, run_name)


def check_file(path, what, hint=''):
    """Raise FileNotFoundError naming ``what`` and ``path`` unless it is a file."""
    if path and not os.path.isfile(path):
        raise FileNotFoundError('{} not found: {}{}'.format(what, path, hint))


def imagenet_weights_path(cfg):
    """RESNETS.IMAGENET_PRETRAINED_WEIGHTS resolved (relative to ROOT_DIR), checked to exist,
    with a message saying how to fetch it or turn it off."""
    path = cfg.RESNETS.IMAGENET_PRETRAINED_WEIGHTS
    if not path:
        raise FileNotFoundError(
            'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS is on but RESNETS.IMAGENET_PRETRAINED_WEIGHTS '
            'names no file; name one (e.g. data/pretrained_model/R-50.pkl) or '
            '--set MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False')
    if not os.path.isabs(path):
        path = os.path.join(cfg.ROOT_DIR, path)
    name = os.path.basename(path)
    check_file(path, 'ImageNet weights (RESNETS.IMAGENET_PRETRAINED_WEIGHTS)',
               '\n  fetch it with: python tools/download_imagenet_weights.py {}\n'
               '  or train from scratch: --set MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS False'
               .format(name))
    return path
