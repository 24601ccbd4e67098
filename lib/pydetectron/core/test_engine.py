"""Inference of one process over a dataset, or a range of it: images read ahead, detections (or
proposals) in Detectron's containers, saved and evaluated.

``test_net(args, dataset, proposal_file, output_dir, ind_range, model=...)`` runs ``model`` over
the images of the dataset (``[start, end)`` of it with ``ind_range``) and saves
``detections.pkl`` (``detection_range_<start>_<end>.pkl``); ``generate_rpn_on_range`` does the same
for the proposals of a ``MODEL.RPN_ONLY`` model. Which processes run them, with which weights,
and how the ranges are merged is ``engine.inference``'s (``run_inference``, the entry point of
``tools/test_net.py``).

Results per dataset, Detectron's layout ([class][image], image positions in roidb order):
  all_boxes[j][i]  (n, 5) float32 x1, y1, x2, y2, score      all_segms[j][i]  list of n RLEs
  all_keyps[j][i]  list of n (4, K) arrays x, y, logit, prob
saved with the config (YAML text) in ``detections.pkl``. ``evaluate_detections_file`` scores a
saved file again without the model.

``args`` is the test tool's namespace; the fields read here are ``vis`` and ``quiet``.
"""
from collections import defaultdict, deque
import concurrent.futures
import datetime
import logging
import os
import pickle
import sys
import threading

import numpy as np
import torch
from tqdm import tqdm

from pydetectron.core import cuda_graphs
from pydetectron.core.config import cfg, dump_cfg
from pydetectron.core.test import (
    FrontAhead, im_detect_all_batch, im_proposals, model_device, prepare_image_blob)
from pydetectron.datasets import task_evaluation
from pydetectron.utils.errors import ImageError
from pydetectron.utils.image_io import read_image
from pydetectron.utils.io import load_pickle_safe
from pydetectron.utils.timer import Timer

logger = logging.getLogger(__name__)


def _arg(args, name, default=None):
    value = getattr(args, name, None) if args is not None else None
    return default if value is None else value


def _ims_per_batch():
    # Images per forward pass at test time (Detectron fixed it at 1).
    return max(int(cfg.TEST.IMS_PER_BATCH), 1)


# ---------------------------------------------------------------------------------------------- #
# Detection
# ---------------------------------------------------------------------------------------------- #

def test_net(args, dataset_name, proposal_file, output_dir, ind_range=None, gpu_id=0,
             model=None):
    """Infer with ``model`` on the images of a dataset (or of ``ind_range`` of it) with a
    progress bar and save ``detections.pkl`` (``detection_range_<start>_<end>.pkl`` for a range).
    Without ``model``, the tools' model (``engine.inference.initialize_model_from_cfg(args,
    gpu_id)``, the weights of ``args``) is built, as in earlier versions.

    Returns (all_boxes, all_segms, all_keyps) for the images inferred.
    """
    if model is None:
        model = _moved('initialize_model_from_cfg')(args, gpu_id=gpu_id)
    if cfg.MODEL.RPN_ONLY:
        raise ValueError('MODEL.RPN_ONLY models make proposals, not detections: use '
                         'generate_rpn_on_range')
    roidb, dataset, start_ind, end_ind, total_num_images = get_roidb_and_dataset(
        dataset_name, proposal_file, ind_range)
    os.makedirs(output_dir, exist_ok=True)
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
    read = _read_ahead(roidb, batches, skipped, prepare=_blob_maker(model))
    pipelines = _pipelines(model)
    with tqdm(total=num_images, desc=desc, unit='im', file=sys.stderr,
              disable=_arg(args, 'quiet', False)) as bar, \
            cuda_graphs.conv_body_graphs(model, _use_cuda_graphs(args, pipelines),
                                         front=batch == 1 and _arg(args, 'front_graphs', False)
                                         ) as graphed:
        # with the front's graphs, the next image's front is queued before this one's results
        ahead = getattr(graphed, 'routes', None) == 'test_front'
        for (first, inds, ims), results in _detections(model, _readable(read), dataset.keypoints,
                                                      timers, pipelines, ahead):
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


def _readable(read):
    """(first, inds, ims, proposals, blob) of each batch read, its unreadable images (and their
    proposals) left out."""
    for (first, inds, proposals), ims, blob in read:
        if proposals is not None:
            proposals = [p for p, im in zip(proposals, ims) if im is not None]
        inds = [i for i, im in zip(inds, ims) if im is not None]
        yield first, inds, [im for im in ims if im is not None], proposals, blob


def _use_cuda_graphs(args, pipelines):
    """Whether test_net replays the conv body as CUDA graphs (``core.cuda_graphs``; a CUDA
    model only): unless ``args.cuda_graphs`` is False (test_net.py's ``--no-cuda_graphs``), with
    one batch in flight and no test-time augmentation (the graphs' outputs last until the next
    replay; augmentation keeps several scales' features)."""
    if _arg(args, 'cuda_graphs', True) is False or pipelines != 1:
        return False
    return not (cfg.TEST.BBOX_AUG.ENABLED or cfg.TEST.MASK_AUG.ENABLED
                or cfg.TEST.KPS_AUG.ENABLED)


def _pipelines(model):
    """How many batches test_net keeps in flight: one, on every device. Two threads on one CUDA
    stream (one launching a batch's kernels while the other waits for its results or encodes
    masks) measured slower on an H100 -- 27.3 ms an image against 21.4 ms with one batch at a
    time, coco_mini val2017 at 800 / 1333 (BENCHMARK.md, "test_net on real photos"); most likely
    the two threads' host work takes turns on the interpreter lock instead of overlapping.
    ``_detections`` keeps the threaded path, which ``dev/benchmark_test_net.py --pipelines N``
    measures."""
    return 1


def _detections(model, batches, keypoint_names, timers, pipelines=1, ahead=False):
    """Yield ``((first, inds, ims), results)`` for each ``(first, inds, ims, proposals, blob)``
    of ``batches``, in order, with up to ``pipelines`` batches detected at once in threads
    (``im_detect_all_batch``; each image's results do not depend on the others in flight).

    ``ahead`` (one batch in flight): each batch of one image that goes through the model's
    ``test_front`` has its front queued (``core.test.FrontAhead``) before the previous batch's
    results are made, and only then read: the device runs the one while the host makes the
    other. The results are the same."""
    def detect(ims, proposals, blob, own_timers, front=None):
        if not ims:
            return []
        with torch.no_grad():
            return im_detect_all_batch(model, ims, proposals, own_timers,
                                       keypoint_names=keypoint_names, blob=blob, ahead=front)

    if pipelines <= 1:
        queued = None
        for first, inds, ims, proposals, blob in batches:
            front = None
            if (ahead and len(ims) == 1 and proposals is None and blob is not None
                    and model.test_front_possible()):
                front = FrontAhead(model, blob)
            if queued is not None:
                yield queued[0], detect(*queued[1:])
            queued = ((first, inds, ims), ims, proposals, blob, timers, front)
            if front is None:   # nothing queued: this batch's results now
                yield queued[0], detect(*queued[1:])
                queued = None
        if queued is not None:
            yield queued[0], detect(*queued[1:])
        return
    pool = _detection_pool(model_device(model), pipelines)
    pending = deque()

    def oldest():
        key, own_timers, future = pending.popleft()
        results = future.result()
        _add_timers(timers, own_timers)
        return key, results

    try:
        for first, inds, ims, proposals, blob in batches:
            own_timers = defaultdict(Timer)
            pending.append(((first, inds, ims), own_timers,
                            pool.submit(detect, ims, proposals, blob, own_timers)))
            if len(pending) >= pipelines:
                yield oldest()
        while pending:
            yield oldest()
    finally:
        # (a batch that failed, or a caller that stopped early: the batches still in flight
        # finish before test_net returns or raises, as they did on one thread)
        for _, _, future in pending:
            future.cancel()
        concurrent.futures.wait([future for _, _, future in pending])


_DETECTION_POOLS = {}
_DETECTION_POOLS_LOCK = threading.Lock()


def _detection_pool(device, threads):
    """The threads that detect batches on ``device``, kept for the process: PyTorch keeps cuDNN's
    execution plans per thread (one per convolution and input shape, built at its first use), so
    threads made anew for each test_net call would build them again for every image size and
    RoI count, every call."""
    key = (str(device), threads)
    with _DETECTION_POOLS_LOCK:
        pool = _DETECTION_POOLS.get(key)
        if pool is None:
            init = (torch.cuda.set_device, (device,)) if device.type == 'cuda' else (None, ())
            pool = concurrent.futures.ThreadPoolExecutor(
                threads, thread_name_prefix='detect', initializer=init[0], initargs=init[1])
            _DETECTION_POOLS[key] = pool
        return pool


def _add_timers(timers, more):
    for name, t in more.items():
        total = timers[name]
        total.total_time += t.total_time
        total.calls += t.calls
        total.average_time = total.total_time / max(total.calls, 1)


def _read_ahead(roidb, batches, skipped, workers=None, ahead=2, prepare=None):
    """Yield ``(batch, images, prepared)`` for each ``(first, inds, proposals)`` batch, the next
    ``ahead`` batches being read by a thread pool while the model works on the current one
    (decoding and resizing release the GIL). Unreadable images are None (see ``_read_image``).
    ``prepare(images)``, called in the same thread on the batch's readable images, makes what
    the model takes (``core.test.prepare_image_blob``); ``prepared`` is None without it or when
    no image could be read."""
    if workers is None:
        workers = max(1, min(4, (os.cpu_count() or 1)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = deque()
        upcoming = iter(batches)

        def submit():
            b = next(upcoming, None)
            if b is not None:
                pending.append((b, pool.submit(_read_batch, roidb, b[1], skipped, prepare)))

        for _ in range(ahead + 1):
            submit()
        while pending:
            b, future = pending.popleft()
            submit()
            ims, prepared = future.result()
            yield b, ims, prepared


def _read_batch(roidb, inds, skipped, prepare):
    ims = [_read_image(roidb[i], skipped) for i in inds]
    readable = [im for im in ims if im is not None]
    return ims, (prepare(readable) if prepare is not None and readable else None)


def _blob_maker(model):
    """What the reader threads make of a batch's images besides reading them: the network's
    input blob (``prepare_image_blob``, page-locked for a CUDA model), when the test path takes
    one blob at TEST.SCALE (not with box test-time augmentation, nor RetinaNet's path)."""
    if cfg.TEST.BBOX_AUG.ENABLED or cfg.RETINANET.RETINANET_ON:
        return None
    pin = model_device(model).type == 'cuda'
    return lambda ims: prepare_image_blob(ims, pin_memory=pin)


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

def generate_rpn_on_range(args, dataset_name, proposal_file, output_dir, ind_range=None,
                          gpu_id=0, model=None):
    """Proposals for the images of a dataset (or a range of it), saved to ``rpn_proposals.pkl``
    (``rpn_proposals_range_<start>_<end>.pkl``) -> (boxes, scores, ids, file). Without
    ``model``, the tools' model is built, as ``test_net`` does."""
    if model is None:
        model = _moved('initialize_model_from_cfg')(args, gpu_id=gpu_id)
    roidb, _, start_ind, end_ind, total = get_roidb_and_dataset(dataset_name, None, ind_range)
    os.makedirs(output_dir, exist_ok=True)
    model.eval()
    boxes, scores, ids = [], [], []
    batch = _ims_per_batch()
    skipped = []
    desc = 'rpn_generate [{:d}, {:d}) of {:d}'.format(start_ind, end_ind, total)
    batches = [(first, list(range(first, min(first + batch, len(roidb)))), None)
               for first in range(0, len(roidb), batch)]
    read = _read_ahead(roidb, batches, skipped, prepare=_blob_maker(model))
    for (first, inds, _), ims, blob in tqdm(read, total=len(batches), desc=desc,
                                            file=sys.stderr, disable=_arg(args, 'quiet', False)):
        entries = [roidb[i] for i in inds]
        good = [k for k, im in enumerate(ims) if im is not None]
        with torch.no_grad():
            found = dict(zip(good, im_proposals(model, [ims[k] for k in good], blob=blob)
                             if good else []))
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


# ---------------------------------------------------------------------------------------------- #
# Names that moved to engine/ (issue 18), still importable from here
# ---------------------------------------------------------------------------------------------- #

# Code written against earlier versions imports these from ``core.test_engine``. They live in
# ``engine`` now (processes, weights and command-line flags are engine's), and are looked up on
# first use, so that importing ``core`` never imports ``engine``.
_MOVED = {name: 'pydetectron.engine.inference' for name in (
    'run_inference', 'initialize_model_from_cfg', 'get_eval_functions', 'get_inference_dataset',
    'test_net_on_dataset', 'multi_gpu_test_net_on_dataset', 'generate_rpn_on_dataset',
    'portable_dataset_name', 'process_in_parallel', 'DEFAULT_TEST_NET_FILE')}
_MOVED.update({name: 'pydetectron.engine.speed_options' for name in (
    'add_speed_arguments', 'apply_speed_options')})


def _moved(name):
    # the one import of engine in core, on first use only (tests/test_import_doors.py allows it)
    import importlib
    return getattr(importlib.import_module(_MOVED[name]), name)


def __getattr__(name):
    if name in _MOVED:
        return _moved(name)
    raise AttributeError('module %r has no attribute %r' % (__name__, name))
