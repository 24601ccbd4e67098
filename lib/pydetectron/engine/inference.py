"""Inference over whole datasets as the test tools run it: the model built from the command
line's weights, one process or child processes over ranges of the dataset, then evaluation.

``run_inference(args)`` runs the model of the global ``cfg`` over every dataset of
``cfg.TEST.DATASETS`` and evaluates it (COCO box / mask / keypoint AP, or proposal recall for
``MODEL.RPN_ONLY``). With ``multi_gpu_testing`` the dataset is cut into contiguous ranges, one
child process per range (one per GPU; ``args.nproc`` CPU processes without CUDA), each running
``tools/test_net.py --range start end`` and saving ``detection_range_<start>_<end>.pkl``; the
parent concatenates them in order into ``detections.pkl`` and evaluates that.

What one process does over a dataset or a range of it -- read the images, detect, keep the
results in Detectron's [class][image] layout, save them -- is ``core.test_engine``'s; this module
decides which processes do it, with which model, and gathers their files.

``args`` is the test tool's namespace; the fields read are ``output_dir``, ``load_ckpt``,
``load_detectron``, ``cuda`` (default: CUDA when available), ``nproc``, ``test_net_file`` (the
script children run; default ``tools/test_net.py`` of this checkout), ``channels_last``,
``compile``, ``cuda_graphs``, ``front_graphs``, ``vis`` and ``quiet``.
"""
import logging
import os
import subprocess
import sys

import numpy as np
import torch
import yaml

from pydetectron.core.config import cfg, dump_cfg
from pydetectron.core.test_engine import (_arg, evaluate_proposal_file, generate_rpn_on_range,
                                          load_object, save_object, test_net)
from pydetectron.datasets import task_evaluation
from pydetectron.engine.initial_weights import load_weights
from pydetectron.engine.speed_options import apply_speed_options
from pydetectron.utils.timer import Timer

logger = logging.getLogger(__name__)

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
DEFAULT_TEST_NET_FILE = os.path.join(_REPO_ROOT, 'tools', 'test_net.py')


def _use_cuda(args):
    return bool(_arg(args, 'cuda', torch.cuda.is_available())) and torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------- #
# Entry point
# ---------------------------------------------------------------------------------------------- #

def get_eval_functions():
    """(parent, child) functions: proposal generation for RPN-only models, detection otherwise."""
    if cfg.MODEL.RPN_ONLY:
        return generate_rpn_on_dataset, generate_rpn_on_range
    return test_net_on_dataset, test_net


def get_inference_dataset(index, is_parent=True):
    """(dataset name, proposal file or None) of ``cfg.TEST.DATASETS[index]``."""
    if not cfg.TEST.DATASETS:
        raise ValueError('cfg.TEST.DATASETS is empty: name the datasets to test on (--dataset, '
                         'or TEST.DATASETS in the config)')
    if not is_parent and len(cfg.TEST.DATASETS) != 1:
        raise ValueError('a child inference process works on one dataset, got TEST.DATASETS=%s'
                         % (cfg.TEST.DATASETS,))
    proposal_file = None
    if cfg.TEST.PRECOMPUTED_PROPOSALS:
        if len(cfg.TEST.PROPOSAL_FILES) != len(cfg.TEST.DATASETS):
            raise ValueError('TEST.PROPOSAL_FILES needs one proposal file per entry of '
                             'TEST.DATASETS (got %d for %d)'
                             % (len(cfg.TEST.PROPOSAL_FILES), len(cfg.TEST.DATASETS)))
        proposal_file = cfg.TEST.PROPOSAL_FILES[index]
    return cfg.TEST.DATASETS[index], proposal_file


def run_inference(args, ind_range=None, multi_gpu_testing=False, gpu_id=0,
                  check_expected_results=False, model=None):
    """Run inference (and evaluation) on every dataset of ``cfg.TEST.DATASETS``.

    ``ind_range`` (start, end) makes this a child that only infers that range of the single
    dataset and saves it. ``model`` (optional) is an already built model to use instead of one
    built from ``cfg`` and ``args``' weights (single process only). Returns the results dict
    {dataset: {task: {metric: value}}} of the parent, the child's detections otherwise.
    """
    parent_func, child_func = get_eval_functions()
    output_dir = _arg(args, 'output_dir')
    if output_dir is None:
        raise ValueError('run_inference: args.output_dir must name the output directory')
    os.makedirs(output_dir, exist_ok=True)
    if ind_range is not None:
        dataset_name, proposal_file = get_inference_dataset(0, is_parent=False)
        if model is None:
            model = initialize_model_from_cfg(args, gpu_id=gpu_id)
        return child_func(args, dataset_name, proposal_file, output_dir, ind_range=ind_range,
                          model=model)

    all_results = {}
    for i in range(len(cfg.TEST.DATASETS)):
        dataset_name, proposal_file = get_inference_dataset(i)
        results = parent_func(args, dataset_name, proposal_file, output_dir,
                              multi_gpu=multi_gpu_testing, gpu_id=gpu_id, model=model)
        all_results.update(results)
    if check_expected_results:
        task_evaluation.check_expected_results(
            all_results, atol=cfg.EXPECTED_RESULTS_ATOL, rtol=cfg.EXPECTED_RESULTS_RTOL)
    task_evaluation.log_copy_paste_friendly_results(all_results)
    return all_results


# ---------------------------------------------------------------------------------------------- #
# The model
# ---------------------------------------------------------------------------------------------- #

def initialize_model_from_cfg(args, gpu_id=0):
    """Build ``Generalized_RCNN`` from ``cfg``, load ``args.load_ckpt`` (a .pth whose 'model'
    holds the state dict) or ``args.load_detectron`` (a Detectron .pkl), put it in eval mode on
    the device."""
    from pydetectron.modeling.model_builder import Generalized_RCNN
    model = Generalized_RCNN()
    load_ckpt = _arg(args, 'load_ckpt')
    load_detectron = _arg(args, 'load_detectron')
    # The one loader of every tool (engine.initial_weights.load_weights): a missing, truncated or
    # unsafe file, or one of another architecture, is a one-line CheckpointError. An exact load:
    # class-specific layers of another shape are a mismatch here, not a fine-tuning start.
    if load_ckpt:
        logger.info('loading checkpoint %s', load_ckpt)
        load_weights(model, load_ckpt, flag='--load_ckpt', kind='checkpoint')
    elif load_detectron:
        logger.info('loading detectron weights %s', load_detectron)
        load_weights(model, load_detectron, flag='--load_detectron', kind='detectron')
    if _use_cuda(args):
        model.cuda(gpu_id)
    model.eval()
    return apply_speed_options(model, _arg(args, 'channels_last', False), _arg(args, 'compile'))


# ---------------------------------------------------------------------------------------------- #
# Whole datasets
# ---------------------------------------------------------------------------------------------- #

def test_net_on_dataset(args, dataset_name, proposal_file, output_dir, multi_gpu=False,
                        gpu_id=0, model=None):
    """Infer on a whole dataset (in one process or several) and evaluate -> results dict."""
    from pydetectron.datasets.json_dataset import JsonDataset
    dataset = JsonDataset(dataset_name)
    timer = Timer()
    timer.tic()
    if multi_gpu:
        if model is not None:
            raise ValueError('multi-process testing builds its models in the children; '
                             'do not pass a model')
        num_images = len(dataset.COCO.getImgIds())
        all_boxes, all_segms, all_keyps = multi_gpu_test_net_on_dataset(
            args, dataset_name, proposal_file, num_images, output_dir)
    else:
        if model is None:
            model = initialize_model_from_cfg(args, gpu_id=gpu_id)
        all_boxes, all_segms, all_keyps = test_net(
            args, dataset_name, proposal_file, output_dir, model=model)
    timer.toc()
    logger.info('Total inference time: {:.3f}s'.format(timer.average_time))
    return task_evaluation.evaluate_all(dataset, all_boxes, all_segms, all_keyps, output_dir)


def multi_gpu_test_net_on_dataset(args, dataset_name, proposal_file, num_images, output_dir):
    """Infer on ranges of the dataset in child processes and merge their detections in order."""
    opts = {'TEST.DATASETS': [portable_dataset_name(dataset_name)]}
    if proposal_file:
        opts['TEST.PROPOSAL_FILES'] = [proposal_file]
    outputs = process_in_parallel('detection', num_images, args, output_dir, opts)
    num_classes = cfg.MODEL.NUM_CLASSES
    all_boxes = [[] for _ in range(num_classes)]
    all_segms = [[] for _ in range(num_classes)]
    all_keyps = [[] for _ in range(num_classes)]
    for det_data in outputs:
        for cls_idx in range(1, num_classes):
            all_boxes[cls_idx] += det_data['all_boxes'][cls_idx]
            all_segms[cls_idx] += det_data['all_segms'][cls_idx]
            all_keyps[cls_idx] += det_data['all_keyps'][cls_idx]
    det_file = os.path.join(output_dir, 'detections.pkl')
    save_object(dict(all_boxes=all_boxes, all_segms=all_segms, all_keyps=all_keyps,
                     cfg=dump_cfg()), det_file)
    logger.info('Wrote detections to: {}'.format(os.path.abspath(det_file)))
    return all_boxes, all_segms, all_keyps


def generate_rpn_on_dataset(args, dataset_name, proposal_file, output_dir, multi_gpu=False,
                            gpu_id=0, model=None):
    """Make proposals for a whole dataset (in one process or several) and evaluate their recall."""
    from pydetectron.datasets.json_dataset import JsonDataset
    dataset = JsonDataset(dataset_name)
    if multi_gpu:
        num_images = len(dataset.COCO.getImgIds())
        outputs = process_in_parallel('rpn_proposals', num_images, args, output_dir,
                                      {'TEST.DATASETS': [portable_dataset_name(dataset_name)]})
        boxes, scores, ids = [], [], []
        for rpn_data in outputs:
            boxes += rpn_data['boxes']
            scores += rpn_data['scores']
            ids += rpn_data['ids']
        rpn_file = os.path.join(output_dir, 'rpn_proposals.pkl')
        save_object(dict(boxes=boxes, scores=scores, ids=ids, cfg=dump_cfg()), rpn_file)
        logger.info('Wrote RPN proposals to {}'.format(os.path.abspath(rpn_file)))
    else:
        if model is None:
            model = initialize_model_from_cfg(args, gpu_id=gpu_id)
        _, _, _, rpn_file = generate_rpn_on_range(args, dataset_name, None, output_dir,
                                                  model=model)
    return evaluate_proposal_file(dataset, rpn_file, output_dir)


# ---------------------------------------------------------------------------------------------- #
# Child processes
# ---------------------------------------------------------------------------------------------- #

def _num_processes(args):
    """``args.nproc`` if given; else one per visible GPU, or NUM_GPUS CPU processes (at most one
    per core) without CUDA."""
    if _arg(args, 'nproc') is not None:
        return max(int(args.nproc), 1)
    if _use_cuda(args):
        return max(torch.cuda.device_count(), 1)
    return max(min(int(cfg.NUM_GPUS), os.cpu_count() or 1), 1)


def _visible_gpus():
    """The GPU ids this process may use, as CUDA_VISIBLE_DEVICES names them (or 0..n-1)."""
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    if visible:
        return [g.strip() for g in visible.split(',') if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def portable_dataset_name(dataset_name):
    """A name of the dataset that a new process resolves too.

    Datasets given as ``coco_json:`` specs live in the catalog under a ``json_<stem>_<hash>``
    name that exists only in the process that registered them; a child gets the spec again.
    """
    from pydetectron.datasets import dataset_catalog
    if dataset_catalog.folder_spec(dataset_name):   # voc: / cityscapes: folders
        return dataset_catalog.folder_spec(dataset_name)
    if not dataset_name.startswith('json_'):
        return dataset_name
    return '{}{}:{}'.format(dataset_catalog.SPEC_PREFIX, dataset_catalog.get_ann_fn(dataset_name),
                            dataset_catalog.get_im_dir(dataset_name))


def process_in_parallel(tag, total_range_size, args, output_dir, opts):
    """Run ``args.test_net_file`` on contiguous ranges of [0, total_range_size), one child per
    GPU (or per CPU process), and return the pickles they wrote, in range order.

    The children get this process's config as a YAML file (with ``opts`` applied) and the same
    weights; each writes its output to ``<tag>_range_<start>_<end>.pkl``-style files and its
    console to ``<tag>_range_<start>_<end>_log.txt`` in ``output_dir``.
    """
    binary = _arg(args, 'test_net_file', DEFAULT_TEST_NET_FILE)
    if not os.path.exists(binary):
        raise FileNotFoundError("test script '{}' not found (args.test_net_file)".format(binary))
    num_procs = _num_processes(args)
    use_cuda = _use_cuda(args)

    plain = yaml.safe_load(dump_cfg())
    for full_key, value in opts.items():
        node = plain
        keys = full_key.split('.')
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    cfg_file = os.path.join(output_dir, '{}_range_config.yaml'.format(tag))
    with open(cfg_file, 'w') as f:
        yaml.safe_dump(plain, f)

    ranges = [r for r in np.array_split(np.arange(total_range_size), num_procs) if len(r)]
    procs = []
    for i, r in enumerate(ranges):
        start, end = int(r[0]), int(r[-1]) + 1
        cmd = [sys.executable, binary, '--cfg', cfg_file, '--range', str(start), str(end),
               '--output_dir', output_dir]
        if _arg(args, 'load_ckpt'):
            cmd += ['--load_ckpt', args.load_ckpt]
        if _arg(args, 'channels_last'):
            cmd += ['--channels_last']
        if _arg(args, 'cuda_graphs') is False:
            cmd += ['--no-cuda_graphs']
        if _arg(args, 'front_graphs'):
            cmd += ['--front_graphs']
        if _arg(args, 'compile'):
            cmd += ['--compile', args.compile]
        if _arg(args, 'compile') or _arg(args, 'shape_buckets') is not None:
            # this process's choice (the default of a CUDA-graph mode, or --shape_buckets 0)
            cmd += ['--shape_buckets', str(cfg.SHAPE_BUCKETS)]
        if _arg(args, 'load_detectron'):
            cmd += ['--load_detectron', args.load_detectron]
        env = os.environ.copy()
        if use_cuda:
            gpus = _visible_gpus()
            env['CUDA_VISIBLE_DEVICES'] = gpus[i % len(gpus)]
        else:
            cmd += ['--no_cuda']
            # Share the cores instead of every child using all of them (unless the user chose).
            env.setdefault('OMP_NUM_THREADS', str(max((os.cpu_count() or 1) // len(ranges), 1)))
        log_file = os.path.join(output_dir, '{}_range_{}_{}_log.txt'.format(tag, start, end))
        logger.info('%s range [%d, %d): %s', tag, start, end, ' '.join(cmd))
        log = open(log_file, 'w')
        procs.append((start, end, subprocess.Popen(cmd, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT), log, log_file))

    outputs, failed = [], []
    for start, end, p, log, log_file in procs:
        ret = p.wait()
        log.close()
        if ret != 0:
            failed.append('range [{}, {}) exited with {} (see {})'.format(start, end, ret,
                                                                          log_file))
            continue
        name = {'detection': 'detection_range_{}_{}.pkl',
                'rpn_proposals': 'rpn_proposals_range_{}_{}.pkl'}[tag].format(start, end)
        outputs.append(load_object(os.path.join(output_dir, name)))
    if failed:
        raise RuntimeError('inference child processes failed:\n  ' + '\n  '.join(failed))
    return outputs
