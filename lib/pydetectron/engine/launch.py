"""``tools/train_net_step.py``'s body: config, data, model, optimizer, resume, then the loop.

    python tools/train_net_step.py --dataset coco2017 \
        --cfg configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml --bs 2
    torchrun --nproc_per_node=8 tools/train_net_step.py --dataset coco2017 --cfg ... --bs 16

Order of a start (the seed's, with resume and checks added):
  1. config (``engine.config_sequence``): YAML, then ``--set``; the adaptive changes
     (``train_setup``); ``--seed``; the dataset (``--dataset`` through the catalog, else
     TRAIN.DATASETS) sets TRAIN.DATASETS and MODEL.NUM_CLASSES; ``assert_and_infer_cfg``;
  2. checks before any heavy work: the weights files named by ``--load_ckpt``,
     ``--load_detectron`` and, when training starts from ImageNet weights, by
     RESNETS.IMAGENET_PRETRAINED_WEIGHTS (a message says how to download it);
  3. the checkpoint to resume: ``--resume`` with ``--load_ckpt`` (that file), ``--resume`` alone or
     TRAIN.AUTO_RESUME (the newest complete ``ckpt/model_step*.pth`` in the output directory);
     ``--load_ckpt`` without ``--resume`` loads the weights only;
  4. roidb, loader (restarted at the checkpoint's data position), model, optimizer, schedule;
  5. ``config.yaml`` (the resolved config) beside ``ckpt/``, TensorBoard with ``--use_tfboard``;
  6. ``Trainer.train``; an interrupted or diverged run exits with a non-zero code and a message.
The output directory is ``--output_dir``, else ``OUTPUT_DIR/<cfg name>/<date>_<host>_step``
(the seed's; a new one per run, so auto-resume needs ``--output_dir``).
"""
import logging
import os
import random
import sys

import numpy as np
import torch

from pydetectron.core import cuda_graphs
from pydetectron.engine import checkpoint as ck
from pydetectron.engine import checkpoint_meta
from pydetectron.engine import compile_shapes
from pydetectron.engine import config_sequence
from pydetectron.engine import distributed as dist_utils
from pydetectron.engine import evaluation
from pydetectron.engine import run_folder
from pydetectron.engine import speed_options
from pydetectron.engine import initial_weights
from pydetectron.engine import train_setup
from pydetectron.engine.cli import check_input_file, check_output_dir
from pydetectron.engine.interrupt import TrainingInterrupted
from pydetectron.engine.optimizer import build_optimizer
from pydetectron.engine.solver import LRScheduler
from pydetectron.engine.trainer import Trainer, TrainingDiverged
from pydetectron.engine.training_stats import TrainingStats
from pydetectron.nn.data_parallel import DataParallel
from pydetectron.utils.errors import CliError
from pydetectron.utils.logging import setup_logging

logger = logging.getLogger(__name__)


def set_seeds(seed):
    """Seed Python, numpy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _plain_args(args):
    return {k: v for k, v in vars(args).items()
            if v is None or isinstance(v, (bool, int, float, str))
            or (isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, str)) for x in v))}


def configure(args, num_gpus, cuda=False, write=print):
    """Step 1 of the module docstring on the global ``cfg`` (``engine.config_sequence``);
    returns the batch size used."""
    batch_size = []

    def training_settings(cfg):
        batch_size.append(train_setup.adjust_config_for_batch_size(
            cfg, args.batch_size, args.iter_size, num_gpus, args.num_workers, args.optimizer,
            args.lr, args.lr_decay_gamma, write=write))
        if args.seed is not None:
            cfg.RNG_SEED = args.seed
        if getattr(args, 'allow_random_frozen_bn', False):
            cfg.TRAIN.ALLOW_RANDOM_FROZEN_BN = True
        compile_shapes.set_shape_buckets(cfg, args)

    config_sequence.configure(args.cfg_file, args.set_cfgs, after_merge=training_settings,
                              dataset=args.dataset, split='train', cuda=cuda)
    return batch_size[0]


def choose_checkpoint(args, output_dir, auto_resume):
    """(checkpoint to resume from, or None; checkpoint to take only the weights from, or None).

    ``--resume --load_ckpt F``: resume F. ``--resume``: the newest complete checkpoint of the
    output directory (an error if there is none). Otherwise, with TRAIN.AUTO_RESUME and a
    checkpoint in the output directory, resume it: initial weights (``--load_ckpt``,
    ``--load_detectron``, ImageNet) only start a fresh run, as in Detectron, so re-running an
    interrupted command continues it. Else ``--load_ckpt`` gives the initial weights.
    """
    if args.load_ckpt:
        check_input_file(args.load_ckpt, '--load_ckpt')
        if args.resume:
            return args.load_ckpt, None
    latest = ck.find_latest_checkpoint(output_dir)
    if args.resume and latest is None:
        raise ck.MissingCheckpointError(
            '--resume: no complete checkpoint under {} (give --load_ckpt, or the --output_dir '
            'of the run to resume)'.format(ck.checkpoint_dir(output_dir)))
    if latest is not None and (args.resume or auto_resume):
        if not args.resume:
            logger.info('TRAIN.AUTO_RESUME: resuming from %s%s', latest,
                        ' (not starting from --load_ckpt / --load_detectron)'
                        if args.load_ckpt or args.load_detectron else '')
        return latest, None
    return None, args.load_ckpt


def default_model_builder():
    from pydetectron.modeling.model_builder import Generalized_RCNN
    return Generalized_RCNN()


def default_loader_builder(cfg, batch_size, num_gpus, info):
    """``start_iter -> DataLoader`` over the training roidb, and the roidb size."""
    from pydetectron.datasets.roidb import combined_roidb_for_training
    from pydetectron.roi_data.loader import build_train_loader
    roidb, ratio_list, ratio_index = combined_roidb_for_training(
        cfg.TRAIN.DATASETS, cfg.TRAIN.PROPOSAL_FILES)
    logger.info('%d roidb entries', len(roidb))

    # Pinned batches make the trainer's host -> GPU copies asynchronous (off the critical path).
    pin = bool(cfg.CUDA) and torch.cuda.is_available()

    def make(start_iter, seed):
        if info.distributed:
            # One GPU per process: rank r reads per-GPU minibatches r, r + N, ... of the stream
            # a single process with N GPUs would read (distributed.shard_train_loader).
            loader = build_train_loader(roidb, ratio_list, ratio_index, cfg.TRAIN.IMS_PER_BATCH,
                                        1, cfg.DATA_LOADER.NUM_THREADS, start_iter=start_iter,
                                        seed=seed, pin_memory=pin)
            return dist_utils.shard_train_loader(loader, info.rank, info.world_size)
        return build_train_loader(roidb, ratio_list, ratio_index, batch_size, num_gpus,
                                  cfg.DATA_LOADER.NUM_THREADS, start_iter=start_iter, seed=seed,
                                  pin_memory=pin)
    return make, len(roidb)


def load_imagenet_weights(model, path):
    """Initialise the backbone from ImageNet weights (Detectron ``.pkl`` or a Caffe-converted
    ``.pth``); the layers the file lacks -- every head -- keep their initialisation."""
    from pydetectron.utils.resnet_weights_helper import load_pretrained_imagenet_weights
    return load_pretrained_imagenet_weights(model, path)


def _start_affines_from_data(model, loader, device, info):
    """A frozen-BN body from random weights (--allow_random_frozen_bn): its AffineChannel layers
    start from the statistics of the first training batch (``nn.affine.
    init_affine_channels_from_data``), then stay frozen. With several processes, rank 0's
    values are sent to every rank (the model is already wrapped by DDP here)."""
    from pydetectron.nn.affine import AffineChannel2d, init_affine_channels_from_data
    iterator = iter(loader)
    try:
        batch = next(iterator)
    finally:
        del iterator                     # its workers end here
    data = batch['data'][0].to(device)
    n = init_affine_channels_from_data(model.Conv_Body, data)
    if info.distributed:
        with torch.no_grad():
            for m in model.Conv_Body.modules():
                if isinstance(m, AffineChannel2d):
                    torch.distributed.broadcast(m.weight, src=0)
                    torch.distributed.broadcast(m.bias, src=0)
    logger.info('Frozen BN from random weights: the body\'s %d AffineChannel layers start from '
                'the channel statistics of the first training batch (%d images)', n,
                data.shape[0])


def main(args, build_model=default_model_builder, build_loader=default_loader_builder):
    """Train as ``tools/train_net_step.py`` describes; returns the process exit code."""
    from pydetectron.core.config import cfg, dump_cfg

    info = dist_utils.init_distributed(use_cuda=args.cuda)
    setup_logging(__name__, logging.INFO if info.is_main_process else logging.WARNING)
    write = print if info.is_main_process else (lambda *a, **k: None)
    write('Called with args:')
    write(args)
    if args.cuda and not torch.cuda.is_available():
        logger.warning('No CUDA device: training on the CPU (pass --no_cuda to silence this)')
    device = info.device
    if info.distributed:
        num_gpus = info.world_size
    elif device.type == 'cuda':
        num_gpus = torch.cuda.device_count()
    else:
        num_gpus = 1

    # 1. config
    batch_size = configure(args, num_gpus, cuda=device.type == 'cuda', write=write)
    set_seeds(cfg.RNG_SEED)

    # 2. checks, 3. checkpoint choice
    if args.load_detectron:
        check_input_file(args.load_detectron, '--load_detectron')
    output_dir = args.output_dir or train_setup.get_output_dir(
        cfg, args.cfg_file, train_setup.get_run_name())
    if not args.no_save and info.is_main_process:
        check_output_dir(output_dir, '--output_dir' if args.output_dir else 'OUTPUT_DIR')
    resume_path, weights_path = choose_checkpoint(args, output_dir, cfg.TRAIN.AUTO_RESUME)
    if info.distributed:
        # Every rank must resume from the same file: rank 0 decides.
        chosen = [resume_path, weights_path]
        torch.distributed.broadcast_object_list(chosen, src=0)
        resume_path, weights_path = chosen
    load_detectron = args.load_detectron if not resume_path else None
    # TRAIN.WEIGHTS (Detectron's way) starts a fresh run unless a flag names the weights
    config_weights = None
    if cfg.TRAIN.WEIGHTS and not (resume_path or weights_path or load_detectron):
        config_weights = initial_weights.resolve_weights_url(cfg.TRAIN.WEIGHTS)
    imagenet_path = None
    if cfg.MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS and not (resume_path or weights_path or
                                                            load_detectron or config_weights):
        imagenet_path = train_setup.imagenet_weights_path(cfg)
    strict_class_heads = getattr(args, 'strict_class_heads', False)

    ckpt = None
    start_step = args.start_step
    if resume_path:
        logger.info('loading checkpoint %s', resume_path)
        ckpt = ck.load_checkpoint(resume_path, for_resume=True, flag='--resume')
        if resume_path:
            start_step = ckpt['step'] + 1
            if start_step >= cfg.SOLVER.MAX_ITER:
                logger.info('Nothing to train: %s is step %d and SOLVER.MAX_ITER is %d',
                            resume_path, ckpt['step'], cfg.SOLVER.MAX_ITER)
                dist_utils.cleanup()
                return 0

    # 4. data, model, optimizer
    make_loader, roidb_size = build_loader(cfg, batch_size, num_gpus, info)
    train_size = roidb_size // batch_size * batch_size   # the seed's "epoch" size
    model = build_model()
    loaded = set()
    if imagenet_path:
        logger.info('Loading ImageNet weights %s', imagenet_path)
        report = load_imagenet_weights(model, imagenet_path)
        loaded |= set(getattr(report, 'loaded', None) or ())
    for path, partial, what in ((weights_path, False, '--load_ckpt'),
                                (load_detectron, False, '--load_detectron'),
                                (config_weights, True, 'TRAIN.WEIGHTS')):
        if path:
            # a checkpoint of this project or of Detectron.pytorch, or a Detectron .pkl; another
            # class count skips the class-specific layers (fine-tuning)
            logger.info('Loading initial weights %s (%s)', path, what)
            loaded |= initial_weights.load_weights(
                model, path, partial=partial, strict_class_heads=strict_class_heads,
                rpn_min_level=cfg.FPN.RPN_MIN_LEVEL, flag=what)
    if not resume_path:
        initial_weights.check_frozen_bn_initialised(
            model, loaded, allow=cfg.TRAIN.ALLOW_RANDOM_FROZEN_BN)
    model.to(device)
    random_affines = not resume_path and initial_weights.random_frozen_bn_body(model, loaded)
    compile_mode = getattr(args, 'compile', None)
    if compile_mode and not info.distributed and num_gpus > 1:
        raise CliError('--compile with %d GPUs in one process: the DataParallel copies the '
                         'model every step, compiled parts included; launch one process per GPU '
                         'with torchrun instead' % num_gpus)
    asked = getattr(args, 'channels_last', None)
    channels_last = speed_options.training_channels_last(asked, getattr(args, 'amp', False),
                                                         device)
    if channels_last and asked is None:
        logger.info('--amp on a GPU: channels-last convolutions (--no-channels_last to keep NCHW)')
    speed_options.apply_speed_options(model, channels_last, compile_mode)
    optimizer = build_optimizer(model, cfg.SOLVER)
    scheduler = LRScheduler(optimizer, cfg.SOLVER)

    data_order = {'seed': int(cfg.RNG_SEED), 'start_iter': 0}
    rng_states = None
    if resume_path:
        ck.load_model_state(model, ckpt['model'], source='--resume {}'.format(resume_path))
        ck.load_optimizer_state(optimizer, ckpt['optimizer'], source=resume_path)
        if ckpt.get('scheduler'):
            scheduler.load_state_dict(ckpt['scheduler'])
        if ckpt.get('data_order'):
            data_order = dict(ckpt['data_order'])
        rng_states = ckpt.get('rng')
        if ckpt.get('train_size', train_size) != train_size:
            logger.warning("train_size %d differs from the checkpoint's %d", train_size,
                           ckpt['train_size'])
        for key, now in (('batch_size', batch_size), ('iter_size', args.iter_size)):
            if ckpt.get(key, now) != now:
                logger.warning('%s is %s, the checkpoint was trained with %s: the data order and '
                               'schedule will not continue exactly', key, now, ckpt[key])
        logger.info('Resuming at step %d', start_step)
    ckpt = None

    if info.distributed:
        model = dist_utils.wrap_model(model, info)
    elif device.type == 'cuda':
        model = DataParallel(model, device_ids=list(range(num_gpus)), cpu_keywords=['roidb'])
    else:
        model = DataParallel(model, device_ids=[], cpu_keywords=['roidb'])

    # 5. outputs
    save = not args.no_save
    tblogger = None
    args.run_name = os.path.basename(os.path.normpath(output_dir))
    args.cfg_filename = os.path.basename(args.cfg_file)
    if save and info.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, 'config.yaml'), 'w') as f:
            f.write(dump_cfg())
        if config_weights and cfg.TRAIN.COPY_WEIGHTS:
            import shutil
            shutil.copyfile(config_weights,
                            os.path.join(output_dir, os.path.basename(config_weights)))
            logger.info('TRAIN.COPY_WEIGHTS: copied %s to %s', config_weights, output_dir)
        logger.info('Output directory: %s', output_dir)
        if args.use_tfboard:
            from tensorboardX import SummaryWriter
            tblogger = SummaryWriter(output_dir)
            logger.info(run_folder.tensorboard_hint(output_dir))
    stats = TrainingStats(args.run_name, args.cfg_filename, cfg.SOLVER.MAX_ITER,
                          log_period=args.disp_interval, iter_size=args.iter_size,
                          tb_logger=tblogger, device=device)
    # evaluation during / after training; the run folder's log.txt, metrics.jsonl, classes.txt
    evaluator = evaluation.build_training_evaluator(
        args, cfg, output_dir if save else None, None, tblogger, device, info)
    run = None
    if save and info.is_main_process:
        run = run_folder.RunFolder(output_dir, start_step, stats, cfg.TRAIN.DATASETS)
        if evaluator is not None:
            evaluator.metrics_file = run.metrics

    # 6. train
    if random_affines:      # after every check of the configuration: this reads data
        _start_affines_from_data(ck.unwrap_model(model), make_loader(0, data_order['seed']),
                                 device, info)
    trainer = Trainer(
        model, optimizer, scheduler,
        lambda start_iter: make_loader(start_iter, data_order['seed']),
        max_iter=cfg.SOLVER.MAX_ITER, iter_size=args.iter_size,
        output_dir=output_dir if save else None, snapshot_period=train_setup.snapshot_period(cfg),
        device=device, amp=args.amp, stats=stats, data_order=data_order, rng_states=rng_states,
        checkpoint_extra=dict({'train_size': train_size, 'batch_size': batch_size,
                               'cfg': dump_cfg(), 'args': _plain_args(args)},
                              **checkpoint_meta.training_metadata(cfg.TRAIN.DATASETS,
                                                                  args.dataset)),
        reduce_values=dist_utils.all_reduce_mean if info.distributed else None,
        is_main_process=info.is_main_process, cpu_keywords=('roidb',),
        after_step=evaluator.after_step if evaluator is not None and evaluator.period else None)
    code = 0
    try:
        if evaluator is not None and resume_path:
            evaluation.catch_up(evaluator, model, start_step - 1, run, info)
        logger.info('Training starts !')
        graphs = getattr(args, 'cuda_graphs', True) and not info.distributed and num_gpus == 1
        with cuda_graphs.training_conv_body_graphs(ck.unwrap_model(model), enabled=graphs):
            last_step = trainer.train(start_step)
        logger.info('Training done: %s', trainer.last_checkpoint[1] if trainer.last_checkpoint
                    else 'nothing saved (--no_save)')
        if evaluator is not None and not getattr(args, 'skip_test', False):
            evaluator.final(model, last_step)
    except (TrainingInterrupted, TrainingDiverged) as e:
        print(str(e), file=sys.stderr, flush=True)
        code = e.exit_code
    finally:
        if tblogger is not None:
            tblogger.close()
        if run is not None:
            run.close()
        dist_utils.cleanup()
    return code
