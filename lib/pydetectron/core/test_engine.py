"""Inference over whole datasets: one process, or several processes over ranges of the dataset.

``run_inference(args)`` runs the model of the global ``cfg`` over every dataset of
``cfg.TEST.DATASETS`` and evaluates it (COCO box / mask / keypoint AP, or proposal recall for
``MODEL.RPN_ONLY``). With ``multi_gpu_testing`` the dataset is cut into contiguous ranges, one
child process per range (one per GPU; ``args.nproc`` CPU processes without CUDA), each running
``tools/test_net.py --range start end`` and saving ``detection_range_<start>_<end>.pkl``; the
parent concatenates them in order into ``detections.pkl`` and evaluates that.

Results per dataset, Detectron's layout ([class][image], image positions in roidb order):
  all_boxes[j][i]  (n, 5) float32 x1, y1, x2, y2, score      all_segms[j][i]  list of n RLEs
  all_keyps[j][i]  list of n (4, K) arrays x, y, logit, prob
saved with the config (YAML text) in ``detections.pkl``. ``evaluate_detections_file`` scores a
saved file again without the model.

``args`` is the test tool's namespace; the fields read are ``output_dir``, ``load_ckpt``,
``load_detectron``, ``cuda`` (default: CUDA when available), ``nproc``, ``test_net_file`` (the
script children run; default ``tools/test_net.py`` of this checkout) and ``vis``.
"""
from collections import defaultdict, deque
import concurrent.futures
import datetime
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
import torch
import yaml
from tqdm import tqdm

from pydetectron.core.config import cfg, dump_cfg
from pydetectron.core.test import im_detect_all_batch, im_proposals
from pydetectron.datasets import task_evaluation
from pydetectron.utils.errors import ImageError
from pydetectron.utils.image_io import read_image
from pydetectron.utils.io import load_pickle_safe
from pydetectron.utils.timer import Timer

logger = logging.getLogger(__name__)

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
DEFAULT_TEST_NET_FILE = os.path.join(_REPO_ROOT, 'tools', 'test_net.py')


def _arg(args, name, default=None):
    value = getattr(args, name, None) if args is not None else None
    return default if value is None else value


def _use_cuda(args):
    return bool(_arg(args, 'cuda', torch.cuda.is_available())) and torch.cuda.is_available()


def _ims_per_batch():
    # Images per forward pass at test time (Detectron fixed it at 1).
    return max(int(cfg.TEST.IMS_PER_BATCH), 1)


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
        return child_func(args, dataset_name, proposal_file, output_dir, ind_range=ind_range,
                          gpu_id=gpu_id, model=model)

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
# Detection
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
        all_boxes, all_segms, all_keyps = test_net(
            args, dataset_name, proposal_file, output_dir, gpu_id=gpu_id, model=model)
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


def test_net(args, dataset_name, proposal_file, output_dir, ind_range=None, gpu_id=0,
             model=None):
    """Infer on the images of a dataset (or of ``ind_range`` of it) with a progress bar and save
    ``detections.pkl`` (``detection_range_<start>_<end>.pkl`` for a range).

    Returns (all_boxes, all_segms, all_keyps) for the images inferred.
    """
    if cfg.MODEL.RPN_ONLY:
        raise ValueError('MODEL.RPN_ONLY models make proposals, not detections: use '
                         'generate_rpn_on_range')
    roidb, dataset, start_ind, end_ind, total_num_images = get_roidb_and_dataset(
        dataset_name, proposal_file, ind_range)
    os.makedirs(output_dir, exist_ok=True)
    if model is None:
        model = initialize_model_from_cfg(args, gpu_id=gpu_id)
    model.eval()
    num_images = len(roidb)
    all_boxes, all_segms, all_keyps = empty_results(cfg.MODEL.NUM_CLASSES, num_images)
    timers = defaultdict(Timer)
    batch = _ims_per_batch()
    vis = bool(cfg.VIS or _arg(args, 'vis', False))
    skipped = []

    desc = 'im_detect [{:d}, {:d}) of {:d}'.format(start_ind, end_ind, total_num_images)
    batches = []
    for first in range(0, num_images, batch):
        inds = list(range(first, min(first + batch, num_images)))
        proposals = None
        if cfg.TEST.PRECOMPUTED_PROPOSALS:
            # Evaluate on the proposals only: a val roidb also holds its ground truth.
            proposals = [roidb[i]['boxes'][roidb[i]['gt_classes'] == 0] for i in inds]
            keep = [k for k, p in enumerate(proposals) if len(p) > 0]
            inds = [inds[k] for k in keep]
            proposals = [proposals[k] for k in keep]
        batches.append((first, inds, proposals))
    with tqdm(total=num_images, desc=desc, unit='im', file=sys.stderr,
              disable=_arg(args, 'quiet', False)) as bar:
        for (first, inds, proposals), ims in _read_ahead(roidb, batches, skipped):
            inds = [i for i, im in zip(inds, ims) if im is not None]
            ims = [im for im in ims if im is not None]
            results = im_detect_all_batch(model, ims, proposals, timers,
                                          keypoint_names=dataset.keypoints) if ims else []
            for i, im, (cls_boxes_i, cls_segms_i, cls_keyps_i) in zip(inds, ims, results):
                extend_results(i, all_boxes, cls_boxes_i)
                if cls_segms_i is not None:
                    extend_results(i, all_segms, cls_segms_i)
                if cls_keyps_i is not None:
                    extend_results(i, all_keyps, cls_keyps_i)
                if vis:
                    from pydetectron.utils import vis as vis_utils
                    im_name = os.path.splitext(os.path.basename(roidb[i]['image']))[0]
                    vis_utils.vis_one_image(
                        im[:, :, ::-1], '{:d}_{:s}'.format(start_ind + i, im_name),
                        os.path.join(output_dir, 'vis'), cls_boxes_i, segms=cls_segms_i,
                        keypoints=cls_keyps_i, thresh=cfg.VIS_TH, box_alpha=0.8,
                        dataset=dataset, show_class=True,
                        keypoint_names=dataset.keypoints or vis_utils.COCO_KEYPOINTS)
            bar.update(len(range(first, min(first + batch, num_images))))
    _log_timing(timers, num_images)
    _log_skipped(skipped, num_images)

    if ind_range is not None:
        det_name = 'detection_range_%s_%s.pkl' % tuple(ind_range)
    else:
        det_name = 'detections.pkl'
    det_file = os.path.join(output_dir, det_name)
    save_object(dict(all_boxes=all_boxes, all_segms=all_segms, all_keyps=all_keyps,
                     cfg=dump_cfg()), det_file)
    logger.info('Wrote detections to: {}'.format(os.path.abspath(det_file)))
    return all_boxes, all_segms, all_keyps


def _read_ahead(roidb, batches, skipped, workers=None, ahead=2):
    """Yield ``(batch, images)`` for each ``(first, inds, proposals)`` batch, the images of the
    next ``ahead`` batches being read by a thread pool while the model works on the current one
    (decoding releases the GIL). Unreadable images are None (see ``_read_image``)."""
    if workers is None:
        workers = max(1, min(4, (os.cpu_count() or 1)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = deque()
        upcoming = iter(batches)

        def submit():
            b = next(upcoming, None)
            if b is not None:
                pending.append((b, [pool.submit(_read_image, roidb[i], skipped) for i in b[1]]))

        for _ in range(ahead + 1):
            submit()
        while pending:
            b, futures = pending.popleft()
            submit()
            yield b, [f.result() for f in futures]


def _read_image(entry, skipped):
    """The roidb entry's image (``utils.image_io.read_image``), or None -- with a warning naming
    the file, and the entry appended to ``skipped`` -- when it is missing, truncated, corrupt or
    of another size than its annotation: one bad file costs its detections (none are reported
    for it, as for an image where nothing is found), never the run."""
    try:
        return read_image(entry['image'], expected_size=(entry['height'], entry['width']),
                          what='image id {}'.format(entry.get('id')))
    except ImageError as e:
        skipped.append(entry['image'])
        logger.warning('Skipping %s (no detections for it; %d skipped so far)', e, len(skipped))
        return None


def _log_skipped(skipped, num_images):
    if skipped:
        logger.warning('Skipped %d of %d images that could not be read: %s%s', len(skipped),
                       num_images, ', '.join(skipped[:5]),
                       ' ...' if len(skipped) > 5 else '')


def _log_timing(timers, num_images):
    det_time = sum(timers[k].average_time for k in
                   ('im_detect_bbox', 'im_detect_mask', 'im_detect_keypoints'))
    misc_time = sum(timers[k].average_time for k in ('misc_bbox', 'misc_mask', 'misc_keypoints'))
    total = sum(t.total_time for t in timers.values())
    logger.info('im_detect: {:d} images, {:.3f}s + {:.3f}s per batch, total {}'.format(
        num_images, det_time, misc_time, datetime.timedelta(seconds=int(total))))


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
    from pydetectron.engine.initial_weights import load_weights
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


def add_speed_arguments(parser):
    """The test tools' ``--channels_last`` and ``--compile [MODE]`` (see apply_speed_options)."""
    parser.add_argument('--channels_last', action='store_true',
                        help='channels-last (NHWC) convolutions: faster on GPUs, in bf16 above all')
    parser.add_argument('--compile', nargs='?', const='default', default=None, metavar='MODE',
                        help='torch.compile the backbone + FPN (MODE: default or '
                        'max-autotune-no-cudagraphs, with dynamic image sizes; reduce-overhead '
                        'or max-autotune, CUDA graphs over --shape_buckets sizes); the first '
                        'images pay the compilation')
    from pydetectron.engine.compile_shapes import add_shape_buckets_argument
    add_shape_buckets_argument(parser)


def apply_speed_options(model, channels_last=False, compile_mode=None):
    """The tools' ``--channels_last`` (NHWC convolutions, cuDNN's fast layout for TF32 and
    bf16) and ``--compile [MODE]`` (torch.compile of the conv body -- backbone and FPN -- in
    place, so parameter names do not change; the first images pay the compilation: with
    dynamic image sizes in 'default' and 'max-autotune-no-cudagraphs' modes, and in the CUDA-graph
    modes one graph per input size, the blobs padded to SHAPE_BUCKETS sizes:
    ``engine.compile_shapes``)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile_mode:
        from pydetectron.engine.compile_shapes import compile_options
        model.Conv_Body.compile(**compile_options(compile_mode))
    return model


def get_roidb_and_dataset(dataset_name, proposal_file, ind_range):
    """The test roidb (restricted to ``ind_range``), the dataset, the range and its total size."""
    from pydetectron.datasets.json_dataset import JsonDataset
    dataset = JsonDataset(dataset_name)
    if cfg.TEST.PRECOMPUTED_PROPOSALS:
        if not proposal_file:
            raise ValueError('Fast R-CNN testing needs a proposal file (TEST.PROPOSAL_FILES)')
        roidb = dataset.get_roidb(gt=False, proposal_file=proposal_file,
                                  proposal_limit=cfg.TEST.PROPOSAL_LIMIT)
    else:
        roidb = dataset.get_roidb(gt=False)
    total_num_images = len(roidb)
    if ind_range is not None:
        start, end = ind_range
        roidb = roidb[start:end]
    else:
        start, end = 0, total_num_images
    return roidb, dataset, start, end, total_num_images


def empty_results(num_classes, num_images):
    """Empty all_boxes, all_segms, all_keyps, each indexed [class][image]."""
    # Not [[]] * n: that would be n references to one list.
    all_boxes = [[[] for _ in range(num_images)] for _ in range(num_classes)]
    all_segms = [[[] for _ in range(num_images)] for _ in range(num_classes)]
    all_keyps = [[[] for _ in range(num_images)] for _ in range(num_classes)]
    return all_boxes, all_segms, all_keyps


def extend_results(index, all_res, im_res):
    """Store one image's per-class results at image position ``index`` (background skipped)."""
    for cls_idx in range(1, len(im_res)):
        all_res[cls_idx][index] = im_res[cls_idx]


def evaluate_detections_file(det_file, dataset_name, output_dir, mask_on=None,
                             keypoints_on=None):
    """Evaluate a saved ``detections.pkl`` again, without the model -> results dict.

    Masks and keypoints are evaluated when ``cfg`` says the model makes them (or when given).
    """
    from pydetectron.datasets.json_dataset import JsonDataset
    dets = load_object(det_file)
    for key in ('all_boxes', 'all_segms', 'all_keyps'):
        if key not in dets:
            raise ValueError('{} is not a detections file: it has no {!r}'.format(det_file, key))
    dataset = JsonDataset(dataset_name)
    os.makedirs(output_dir, exist_ok=True)
    results = task_evaluation.evaluate_all(dataset, dets['all_boxes'], dets['all_segms'],
                                           dets['all_keyps'], output_dir, mask_on=mask_on,
                                           keypoints_on=keypoints_on)
    task_evaluation.log_copy_paste_friendly_results(results)
    return results


# ---------------------------------------------------------------------------------------------- #
# Proposals (MODEL.RPN_ONLY)
# ---------------------------------------------------------------------------------------------- #

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
        _, _, _, rpn_file = generate_rpn_on_range(args, dataset_name, None, output_dir,
                                                  gpu_id=gpu_id, model=model)
    return evaluate_proposal_file(dataset, rpn_file, output_dir)


def generate_rpn_on_range(args, dataset_name, proposal_file, output_dir, ind_range=None,
                          gpu_id=0, model=None):
    """Proposals for the images of a dataset (or a range of it), saved to ``rpn_proposals.pkl``
    (``rpn_proposals_range_<start>_<end>.pkl``) -> (boxes, scores, ids, file)."""
    roidb, _, start_ind, end_ind, total = get_roidb_and_dataset(dataset_name, None, ind_range)
    os.makedirs(output_dir, exist_ok=True)
    if model is None:
        model = initialize_model_from_cfg(args, gpu_id=gpu_id)
    model.eval()
    boxes, scores, ids = [], [], []
    batch = _ims_per_batch()
    skipped = []
    desc = 'rpn_generate [{:d}, {:d}) of {:d}'.format(start_ind, end_ind, total)
    for first in tqdm(range(0, len(roidb), batch), desc=desc, file=sys.stderr,
                      disable=_arg(args, 'quiet', False)):
        entries = roidb[first:first + batch]
        ims = [_read_image(e, skipped) for e in entries]
        good = [k for k, im in enumerate(ims) if im is not None]
        found = dict(zip(good, im_proposals(model, [ims[k] for k in good]) if good else []))
        for k, entry in enumerate(entries):
            # an unreadable image has no proposals (an empty list keeps the ids aligned)
            b, s = found.get(k, (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)))
            boxes.append(b)
            scores.append(s)
            ids.append(entry['id'])
    _log_skipped(skipped, len(roidb))
    name = ('rpn_proposals_range_%s_%s.pkl' % tuple(ind_range)) if ind_range is not None \
        else 'rpn_proposals.pkl'
    rpn_file = os.path.join(output_dir, name)
    save_object(dict(boxes=boxes, scores=scores, ids=ids, cfg=dump_cfg()), rpn_file)
    logger.info('Wrote RPN proposals to {}'.format(os.path.abspath(rpn_file)))
    return boxes, scores, ids, rpn_file


def evaluate_proposal_file(dataset, proposal_file, output_dir):
    """Average recall (AR@100, AR@1000, per size) of a proposals file against the ground truth."""
    # The roidb loader clips, de-duplicates and drops tiny proposals, as Detectron's did.
    roidb = dataset.get_roidb(gt=True, proposal_file=proposal_file)
    results = task_evaluation.evaluate_box_proposals(dataset, roidb)
    task_evaluation.log_box_proposal_results(results)
    save_object(results, os.path.join(output_dir, 'rpn_proposal_recall.pkl'))
    return results


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


# ---------------------------------------------------------------------------------------------- #
# Files
# ---------------------------------------------------------------------------------------------- #

def save_object(obj, file_name):
    """Pickle ``obj`` to ``file_name`` atomically (a partial file never replaces a good one).

    Protocol 4: numpy arrays then pickle through ``_reconstruct``, which the restricted
    unpicklers of this package (results, proposal files) accept.
    """
    tmp = file_name + '.tmp'
    with open(tmp, 'wb') as f:
        pickle.dump(obj, f, protocol=4)
    os.replace(tmp, file_name)


def load_object(file_name):
    """Load a pickle written by ``save_object`` (numpy arrays and builtins only)."""
    # Allow-listing unpickler: opening a detections file received from elsewhere runs no code.
    return load_pickle_safe(file_name, what='a results file', encoding='ASCII')
