"""Cheap hand-over of batches from DataLoader worker processes to the training process.

A worker returns its batch through a pipe: tensors travel as shared memory, everything else is
pickled. Two costs dominate for detection batches, and this module removes both:

* **Image blobs** (~10 MB per COCO image at scale 800): a fresh shared-memory tensor per batch
  costs its page faults, about as much as reading, decoding and resizing the image. Workers
  therefore keep a small pool of shared buffers and refill a buffer once the training process has
  dropped every reference to the blob it carried. The training process receives an ordinary
  tensor; when its memory is freed (no view or copy of it left), a flag in a shared array tells the
  worker that the buffer may be reused. A worker whose buffers are all still in use simply
  allocates a fresh one.
* **Small ground-truth arrays** (a dozen per image): as tensors each would cost a shared-memory
  segment and a file descriptor; they travel pickled instead, as numpy arrays, and become tensors
  on arrival.

In the process that builds a batch (``num_workers=0``) the same functions return plain tensors.
"""
import math
import os
import weakref

import numpy as np
import torch
import torch.utils.data as torch_data


class TensorOnArrival(object):
    """A numpy array that is pickled as itself and unpickled as a tensor (``torch.from_numpy``)."""

    __slots__ = ('array',)

    def __init__(self, array):
        self.array = np.ascontiguousarray(array)

    def __reduce__(self):
        return torch.from_numpy, (self.array,)


def as_tensor(array):
    """A tensor here, or a ``TensorOnArrival`` in a worker process."""
    if torch_data.get_worker_info() is None:
        return torch.from_numpy(np.ascontiguousarray(array))
    return TensorOnArrival(array)


def _release(flags, slot):
    flags[slot] = 0


def _rebuild_pooled_blob(buffer, shape, flags, slot):
    """In the training process: a tensor over the pooled buffer that frees the slot when its
    memory is freed."""
    numel = int(np.prod(shape))
    blob = buffer[:numel * 4].view(torch.float32).view(shape)
    # The returned tensor owns a numpy view that owns ``blob``: the view dies only when every
    # tensor sharing the returned tensor's memory is gone, and its death releases the slot.
    array = blob.numpy()
    weakref.finalize(array, _release, flags, slot)
    return torch.from_numpy(array)


class PooledBlob(object):
    """A blob in a worker's pooled buffer; unpickled in the training process as a tensor."""

    __slots__ = ('buffer', 'shape', 'flags', 'slot', 'array')

    def __init__(self, buffer, shape, flags, slot):
        self.buffer, self.shape, self.flags, self.slot = buffer, tuple(shape), flags, slot
        numel = int(np.prod(shape))
        self.array = buffer[:numel * 4].view(torch.float32).view(self.shape).numpy()

    def __reduce__(self):
        return _rebuild_pooled_blob, (self.buffer, self.shape, self.flags, self.slot)


class BlobPool(object):
    """A worker's reusable shared buffers. ``flags[i]`` is 1 while slot i is with the trainer."""

    def __init__(self, max_slots):
        self.pid = os.getpid()
        self.max_slots = int(max_slots)
        self.flags = torch.zeros(self.max_slots, dtype=torch.uint8).share_memory_()
        self.buffers = []

    def blob(self, shape):
        """A PooledBlob of ``shape`` (float32), or None when every slot is in use."""
        nbytes = int(np.prod(shape)) * 4
        flags = self.flags.numpy()
        free = [i for i in range(len(self.buffers)) if flags[i] == 0]
        fitting = [i for i in free if self.buffers[i].numel() >= nbytes]
        if fitting:
            slot = min(fitting, key=lambda i: self.buffers[i].numel())
        else:
            # a new buffer with some headroom, in place of a free one that is too small if needed
            capacity = int(math.ceil(nbytes * 1.15 / 2 ** 20)) * 2 ** 20
            buffer = torch.empty(0, dtype=torch.uint8).set_(
                torch.UntypedStorage._new_shared(capacity))
            if len(self.buffers) < self.max_slots:
                slot = len(self.buffers)
                self.buffers.append(buffer)
            elif free:
                slot = min(free, key=lambda i: self.buffers[i].numel())
                self.buffers[slot] = buffer
            else:
                return None
        flags[slot] = 1
        return PooledBlob(self.buffers[slot], shape, self.flags, slot)


_POOL = None


def new_blob(shape, max_pooled=8):
    """A float32 blob to fill, with its numpy view: ``(blob, array)``.

    Here, ``blob`` is a tensor; in a worker process it is a PooledBlob (a tensor once it reaches
    the training process), or a fresh shared-memory tensor when the worker's pool is busy.
    """
    global _POOL
    if torch_data.get_worker_info() is None:
        blob = torch.empty(shape, dtype=torch.float32)
        return blob, blob.numpy()
    if _POOL is None or _POOL.pid != os.getpid():  # a forked child must not share its parent's
        _POOL = BlobPool(max_pooled)
    pooled = _POOL.blob(shape)
    if pooled is not None:
        return pooled, pooled.array
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * 4)
    blob = torch.empty(0, dtype=torch.float32).set_(storage).view(shape)
    return blob, blob.numpy()
