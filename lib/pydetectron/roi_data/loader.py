"""The training data loader: aspect-grouped, resumable, one padded blob per GPU.

Build it with::

    loader = build_train_loader(roidb, ratio_list, ratio_index,
                                batch_size=cfg.TRAIN.IMS_PER_BATCH * cfg.NUM_GPUS,
                                num_gpus=cfg.NUM_GPUS, num_workers=cfg.DATA_LOADER.NUM_THREADS,
                                start_iter=0, seed=cfg.RNG_SEED)
    for step, batch in zip(range(start_iter, max_iter), loader): ...

(``roidb, ratio_list, ratio_index`` from ``datasets.roidb.combined_roidb_for_training``.)
The loader never ends: iteration ``i`` of the stream is the same minibatch whatever ``start_iter``
the loader was built with, so resuming at step ``s`` (``start_iter=s``, or
``loader.batch_sampler.set_start_iter(s)`` before making a new iterator) restores the data order.

Each batch is a dict of lists with one item per GPU (the dict-aware ``nn.DataParallel`` scatters
item i to GPU i); ``n = batch_size // num_gpus`` images per GPU::

    batch['data'][g]     (n, 3, H_g, W_g) float32 CPU tensor: BGR images minus PIXEL_MEANS,
                         zero-padded at the bottom/right to this GPU's largest image, and to a
                         multiple of FPN.COARSEST_STRIDE when FPN.FPN_ON (then up to a
                         bucket size with SHAPE_BUCKETS: utils.blob.ShapeBuckets)
    batch['im_info'][g]  (n, 3) float32 tensor: (height, width, im_scale) per image, height and
                         width being the scaled (and cropped) image size without padding
    batch['roidb'][g]    list of n dicts, the ground truth in blob coordinates (x_blob = im_scale
                         * x_image). R rows = G ground-truth boxes first, then precomputed
                         proposals (Fast R-CNN training only; ``boxes[gt_classes == 0]``):
        'boxes'            (R, 4) float32 tensor, (x1, y1, x2, y2) inclusive (+1 convention)
        'gt_boxes'         (G, 4) float32 tensor, the ground-truth rows of 'boxes'
        'gt_classes'       (R,) int64 tensor, contiguous class (0 = background / proposal)
        'is_crowd'         (R,) bool tensor; crowd boxes are never foreground (Detectron
                           excludes them from RPN and RoI targets)
        'box_to_gt_ind_map'(R,) int64 tensor, row -> index of its ground truth in [0, G) (-1 none)
        'max_classes'      (R,) int64, 'max_overlaps' (R,) float32 (-1 for crowds),
        'bbox_targets'     (R, 5) float32 (class, dx, dy, dw, dh), 'seg_areas' (R,) float32
        'segms'            list of G items: polygons as a list of (2P,) float32 numpy arrays
                           [x0, y0, x1, y1, ...] in blob coordinates, or (crowds) a compressed
                           RLE dict {'size': [h, w], 'counts': bytes} at the scaled image size
        'gt_keypoints'     (G, 3, K) float32 tensor, rows (x, y, v) with x, y in blob
                           coordinates, v the COCO visibility (keypoint datasets only)
        'has_visible_keypoints' bool, 'id' image id, 'image' path, 'flipped' bool,
        'crop_box'         (x1, y1, x2, y2) of the aspect crop in original pixels, or None
      and the roidb's own values at the original (cropped) image scale, where Detectron computes
      the Fast R-CNN box targets, the mask targets and the keypoint targets:
        'boxes_orig'       (R, 4) float32 tensor ('boxes' is boxes_orig * float32(im_scale))
        'segms_orig'       list of G items: (2P,) float32 polygon arrays, or the RLE dict
        'gt_keypoints_orig'(G, 3, K) float32 tensor (keypoint datasets only)

Sampling (Detectron's ``_shuffle_roidb_inds`` with TRAIN.ASPECT_GROUPING): each epoch the
horizontal (width >= height) and vertical images are shuffled separately, cut into per-GPU
minibatches of n images (a remainder smaller than n is left out of that epoch), and the
minibatches are shuffled together; so no minibatch mixes orientations. Each image draws its own
scale from TRAIN.SCALES (Detectron's ``get_minibatch``: one random scale index per image). With TRAIN.ASPECT_CROPPING, images whose aspect ratio lies
outside [ASPECT_LO, ASPECT_HI] are cropped to the bound (see ``roi_data.minibatch``). All random
choices derive from ``seed`` and the position in the stream, never from worker state.

An image that cannot be read is replaced (with a warning naming it and a running count) by the
next image of the same orientation, so a bad file never stops training.

Worker processes hand their batches over through ``roi_data.transport``: blobs travel in pooled
shared buffers that a worker refills only after the training process has freed every tensor
(view or copy) using them, and the small ground-truth arrays travel pickled. The trainer sees
ordinary CPU tensors either way; it should simply not keep batches alive longer than it needs them.
"""
import atexit
import functools
import logging
import resource
import signal
import weakref

import cv2
import numpy as np
import torch
import torch.utils.data as torch_data

from pydetectron.roi_data import transport
from pydetectron.roi_data.minibatch import ImageLoadError, get_minibatch_entry
from pydetectron.utils import blob as blob_utils
from pydetectron.utils.errors import DatasetError

logger = logging.getLogger(__name__)

# Keys of the per-image ground-truth dict that become tensors (the rest stay Python/numpy).
_TENSOR_KEYS = ('boxes', 'gt_boxes', 'gt_classes', 'is_crowd', 'box_to_gt_ind_map',
                'max_classes', 'max_overlaps', 'bbox_targets', 'seg_areas', 'gt_keypoints',
                'boxes_orig', 'gt_keypoints_orig')


def _seeded_rng(*key):
    """A RandomState determined by a tuple of non-negative ints."""
    return np.random.RandomState(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


class AspectGroupedBatchSampler(torch_data.Sampler):
    """Infinite, resumable stream of training batches.

    Yields lists of ``images_per_gpu * num_gpus`` items ``(roidb index, target size, crop seed)``,
    GPU after GPU. See the module docstring for the grouping rule.
    """

    def __init__(self, ratio_list, ratio_index, images_per_gpu, num_gpus, scales, seed,
                 start_iter=0, aspect_grouping=True):
        ratio_list = np.asarray(ratio_list, dtype=np.float64)
        ratio_index = np.asarray(ratio_index, dtype=np.int64)
        if ratio_list.shape != ratio_index.shape or ratio_list.ndim != 1:
            raise ValueError('ratio_list and ratio_index must be 1-D of the same length, got %s '
                             'and %s' % (ratio_list.shape, ratio_index.shape))
        if images_per_gpu < 1 or num_gpus < 1:
            raise ValueError('images_per_gpu (%r) and num_gpus (%r) must be >= 1'
                             % (images_per_gpu, num_gpus))
        if len(scales) == 0:
            raise ValueError('TRAIN.SCALES is empty')
        self.images_per_gpu = int(images_per_gpu)
        self.num_gpus = int(num_gpus)
        self.scales = tuple(int(s) for s in scales)
        self.seed = int(seed)
        self.start_iter = int(start_iter)
        self.aspect_grouping = bool(aspect_grouping)
        if self.aspect_grouping:
            self._groups = [ratio_index[ratio_list >= 1], ratio_index[ratio_list < 1]]
        else:
            self._groups = [ratio_index]
        mb = self.images_per_gpu
        # per-GPU minibatches per epoch (constant: only the order changes between epochs)
        self.minibatches_per_epoch = sum(len(g) // mb for g in self._groups)
        if self.minibatches_per_epoch == 0:
            raise DatasetError(
                'cannot form a minibatch of %d images: the roidb has %s images%s' % (
                    mb, ' and '.join(str(len(g)) for g in self._groups),
                    ' (horizontal and vertical images are never mixed)'
                    if self.aspect_grouping else ''))
        self._plans = {}

    @property
    def iters_per_epoch(self):
        """Training iterations (batches) per pass over the roidb."""
        return self.minibatches_per_epoch / float(self.num_gpus)

    def set_start_iter(self, start_iter):
        """Begin the next iteration over this sampler at step ``start_iter``."""
        self.start_iter = int(start_iter)

    def _plan(self, epoch):
        """(M, n) roidb indices, (M, n) scales and (M, n) crop seeds of an epoch's minibatches."""
        if epoch not in self._plans:
            rng = _seeded_rng(self.seed, epoch)
            mb = self.images_per_gpu
            rows = []
            for group in self._groups:
                perm = rng.permutation(group)
                rows.append(perm[:(len(perm) // mb) * mb].reshape(-1, mb))
            inds = np.concatenate(rows, axis=0)
            inds = inds[rng.permutation(inds.shape[0])]
            # one scale per image, as Detectron draws them
            scales = np.asarray(self.scales)[rng.randint(len(self.scales), size=inds.shape)]
            crop_seeds = rng.randint(0, 2 ** 31 - 1, size=inds.shape)
            if len(self._plans) > 2:
                self._plans.pop(min(self._plans))
            self._plans[epoch] = (inds, scales, crop_seeds)
        return self._plans[epoch]

    def minibatch(self, k):
        """Items of the k-th per-GPU minibatch of the stream."""
        epoch, row = divmod(k, self.minibatches_per_epoch)
        inds, scales, crop_seeds = self._plan(epoch)
        return [(int(i), int(t), int(s))
                for i, t, s in zip(inds[row], scales[row], crop_seeds[row])]

    def batch(self, step):
        """Items of training iteration ``step`` (all GPUs)."""
        items = []
        for g in range(self.num_gpus):
            items.extend(self.minibatch(step * self.num_gpus + g))
        return items

    def __iter__(self):
        step = self.start_iter
        while True:
            yield self.batch(step)
            step += 1


class RoiDataset(torch_data.Dataset):
    """Maps a sampler item ``(roidb index, target size, crop seed)`` to one prepared image.

    Everything it needs from the config is passed in, so workers do not depend on the global cfg.
    """

    def __init__(self, roidb, ratio_list, ratio_index, max_size, pixel_means,
                 aspect_cropping=False, aspect_lo=0.5, aspect_hi=2.0, max_retries=10):
        self._roidb = roidb
        self.max_size = int(max_size)
        self.pixel_means = np.asarray(pixel_means, dtype=np.float64).reshape(-1)
        self.aspect_cropping = bool(aspect_cropping)
        self.aspect_lo, self.aspect_hi = float(aspect_lo), float(aspect_hi)
        self.max_retries = int(max_retries)
        # stand-ins for unreadable images: the entries of the same orientation, in roidb order
        ratio_list = np.asarray(ratio_list)
        ratio_index = np.asarray(ratio_index)
        horizontal = np.sort(ratio_index[ratio_list >= 1])
        vertical = np.sort(ratio_index[ratio_list < 1])
        self._same_orientation = {}
        for group in (horizontal, vertical):
            for pos, idx in enumerate(group):
                self._same_orientation[int(idx)] = (group, pos)
        self.num_unreadable = 0

    def __len__(self):
        return len(self._roidb)

    def _crop_ratio(self, entry):
        if not (self.aspect_cropping and entry.get('need_crop', False)):
            return None
        ratio = entry['width'] / float(entry['height'])
        return self.aspect_hi if ratio > self.aspect_hi else self.aspect_lo

    def __getitem__(self, item):
        index, target_size, crop_seed = item
        candidate = index
        for attempt in range(self.max_retries + 1):
            entry = self._roidb[candidate]
            try:
                im, im_scale, gt = get_minibatch_entry(
                    entry, target_size, self.max_size, self.pixel_means,
                    crop_ratio=self._crop_ratio(entry), rng=_seeded_rng(crop_seed, candidate))
                return {'im': im, 'im_scale': im_scale, 'roidb': gt}
            except ImageLoadError as e:
                self.num_unreadable += 1
                group, pos = self._same_orientation.get(candidate, (np.array([candidate]), 0))
                candidate = int(group[(pos + 1 + attempt) % len(group)])
                logger.warning('%s; using image %s instead (%d unreadable images so far in this '
                               'loader process)', e, self._roidb[candidate]['image'],
                               self.num_unreadable)
            except Exception as e:
                # Any other fault: name the image, so the worker's error in the training
                # process says which record to look at.
                raise RuntimeError('loading image %s (image id %s) failed: %s: %s'
                                   % (entry['image'], entry.get('id'), type(e).__name__, e)) from e
        raise ImageLoadError('gave up after %d unreadable images in a row, starting at %s; check '
                             'the dataset with tools/check_dataset.py --all_images'
                             % (self.max_retries + 1, self._roidb[index]['image']))


def _to_tensors(gt):
    out = dict(gt)
    for key in _TENSOR_KEYS:
        if key in out:
            out[key] = transport.as_tensor(out[key])
    return out


def collate_minibatch(items, num_gpus, stride, buckets=None):
    """Per-image results of one iteration -> the batch dict of the module docstring (``buckets``:
    the ``blob.ShapeBuckets`` of SHAPE_BUCKETS, or None)."""
    if len(items) % num_gpus != 0:
        raise ValueError('collate_minibatch: %d images cannot be split over %d GPUs'
                         % (len(items), num_gpus))
    n = len(items) // num_gpus
    batch = {'data': [], 'im_info': [], 'roidb': []}
    for g in range(num_gpus):
        chunk = items[g * n:(g + 1) * n]
        ims = [it['im'] for it in chunk]
        # (a pooled shared buffer in worker processes: see roi_data.transport)
        blob, array = transport.new_blob(blob_utils.blob_shape(ims, stride, buckets),
                                         max_pooled=4 * num_gpus)
        blob_utils.im_list_to_blob(ims, stride=stride, out=array, buckets=buckets)
        im_info = np.array([[it['im'].shape[0], it['im'].shape[1], it['im_scale']]
                            for it in chunk], dtype=np.float32)
        batch['data'].append(blob)
        batch['im_info'].append(transport.as_tensor(im_info))
        batch['roidb'].append([_to_tensors(it['roidb']) for it in chunk])
    return batch


def raise_open_file_limit(target=65536):
    """Raise this process's soft limit of open files toward ``target`` (at most the hard limit):
    tensors sent from worker processes travel as file descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as e:
            logger.warning('could not raise the open-file limit from %d to %d: %s', soft, want, e)


# Signals a scheduler sends to the whole process group to stop a job (Ctrl-C, timeout, Slurm).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def worker_init_fn(worker_id):
    # OpenCV's own thread pool would oversubscribe the cores the workers already share
    cv2.setNumThreads(0)
    torch.set_num_threads(1)
    ignore_stop_signals()


# Worker processes started by TrainLoader iterators (weak: a finished iterator drops them).
_WORKERS = weakref.WeakSet()


class TrainLoader(torch_data.DataLoader):
    """torch's DataLoader, remembering the worker processes of its iterators so that none
    outlives the interpreter (see ``_kill_leftover_workers``)."""

    def _get_iterator(self):
        iterator = super()._get_iterator()
        _WORKERS.update(getattr(iterator, '_workers', ()))
        return iterator


def _kill_leftover_workers():
    """At interpreter exit, SIGKILL the TrainLoader workers that are still running.

    Our workers ignore SIGTERM (``ignore_stop_signals``). A worker whose loader iterator was
    never shut down (one kept alive by a traceback, a reference cycle or a global) is still
    running when Python exits, and multiprocessing's own exit handler ends daemonic children
    with SIGTERM and then joins them: the join would wait forever and the process would never
    exit. Registered after multiprocessing's handler, this one runs before it (atexit is LIFO).
    """
    alive = [proc for proc in list(_WORKERS) if _alive(proc)]
    if not alive:
        return
    # torch's SIGCHLD handler raises in this thread when it sees a worker die: the process is
    # exiting, nothing needs that report now.
    if hasattr(signal, 'SIGCHLD'):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for proc in alive:
        try:
            proc.kill()
        except (OSError, ValueError):
            pass
    for proc in alive:
        try:
            proc.join(timeout=5)
        except (OSError, ValueError, AssertionError):
            pass


def _alive(proc):
    try:
        return proc.is_alive()
    except (OSError, ValueError, AssertionError):   # closed, or not this process's child
        return False


# multiprocessing.util registers its exit handler when it is first imported, which torch may
# not have done yet: import it first so that ours, registered after it, runs before it.
import multiprocessing.util  # noqa: E402,F401
atexit.register(_kill_leftover_workers)


def ignore_stop_signals():
    """In a loader worker: ignore SIGINT / SIGTERM, so that a signal sent to the whole process
    group (what ``timeout``, Slurm and a terminal's Ctrl-C do) leaves the workers running and the
    training process decides: it finishes or abandons its step, saves, and ends the workers
    itself. The training process starts its workers with these signals blocked
    (``engine.trainer``), so one arriving before this runs waits and is then discarded."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if hasattr(signal, 'pthread_sigmask'):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def build_train_loader(roidb, ratio_list, ratio_index, batch_size, num_gpus, num_workers,
                       start_iter=0, seed=None, pin_memory=False):
    """The training DataLoader (see the module docstring for its batches).

    ``batch_size`` counts images of one iteration over all GPUs (TRAIN.IMS_PER_BATCH *
    NUM_GPUS). Scales, MAX_SIZE, PIXEL_MEANS, aspect grouping/cropping, the FPN padding and the
    SHAPE_BUCKETS padding come from ``cfg``; ``seed`` defaults to ``cfg.RNG_SEED``.
    """
    from pydetectron.core.config import cfg
    if batch_size % num_gpus != 0:
        raise ValueError('batch_size %d is not a multiple of num_gpus %d' % (batch_size, num_gpus))
    if seed is None:
        seed = cfg.RNG_SEED
    cv2.setNumThreads(0)
    raise_open_file_limit()
    sampler = AspectGroupedBatchSampler(
        ratio_list, ratio_index, images_per_gpu=batch_size // num_gpus, num_gpus=num_gpus,
        scales=cfg.TRAIN.SCALES, seed=seed, start_iter=start_iter,
        aspect_grouping=cfg.TRAIN.ASPECT_GROUPING)
    dataset = RoiDataset(roidb, ratio_list, ratio_index, max_size=cfg.TRAIN.MAX_SIZE,
                         pixel_means=cfg.PIXEL_MEANS, aspect_cropping=cfg.TRAIN.ASPECT_CROPPING,
                         aspect_lo=cfg.TRAIN.ASPECT_LO, aspect_hi=cfg.TRAIN.ASPECT_HI)
    stride = blob_utils.coarsest_stride(cfg)
    # (the workers get the stride and the buckets in the collate function, not from cfg)
    buckets = blob_utils.cfg_shape_buckets(training=True)
    return TrainLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers,
        collate_fn=functools.partial(collate_minibatch, num_gpus=num_gpus, stride=stride,
                                     buckets=buckets),
        worker_init_fn=worker_init_fn if num_workers > 0 else None,
        pin_memory=pin_memory, persistent_workers=False)
