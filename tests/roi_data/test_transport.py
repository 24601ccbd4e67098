"""roi_data.transport: pooled blobs are reused only after the trainer has let go of them."""
import gc
import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import torch
import torch.multiprocessing  # noqa: F401  (registers the tensor reductions used by workers)

from pydetectron.roi_data import transport


def _send(obj):
    """What a worker's result goes through on its way to the training process."""
    return pickle.loads(ForkingPickler.dumps(obj))


def test_pooled_blob_slot_is_released_with_the_last_view():
    pool = transport.BlobPool(max_slots=2)
    blob = pool.blob((2, 3, 4, 5))
    blob.array[:] = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    received = _send(blob)
    assert isinstance(received, torch.Tensor) and received.shape == (2, 3, 4, 5)
    assert received.dtype == torch.float32 and received[1, 2, 3, 4].item() == 119
    view = received[1]
    del received, blob
    gc.collect()
    assert pool.flags.tolist() == [1, 0]       # a view still uses the memory
    del view
    gc.collect()
    assert pool.flags.tolist() == [0, 0]       # now the worker may refill it
    again = pool.blob((2, 3, 4, 5))
    assert again.slot == 0 and len(pool.buffers) == 1


def test_busy_pool_grows_then_gives_up():
    pool = transport.BlobPool(max_slots=2)
    held = [_send(pool.blob((1, 3, 8, 8))), _send(pool.blob((1, 3, 8, 8)))]
    assert pool.flags.tolist() == [1, 1] and pool.blob((1, 3, 8, 8)) is None
    del held
    gc.collect()
    # a larger blob replaces a free buffer that is too small
    bigger = pool.blob((1, 3, 64, 64))
    assert bigger is not None and pool.buffers[bigger.slot].numel() >= 3 * 64 * 64 * 4


def test_small_arrays_arrive_as_tensors():
    boxes = np.array([[1, 2, 3, 4]], np.float32)
    assert torch.equal(_send(transport.TensorOnArrival(boxes)), torch.from_numpy(boxes))
    flags = _send(transport.TensorOnArrival(np.array([True, False])))
    assert flags.dtype == torch.bool
    # outside a worker process: plain tensors
    assert isinstance(transport.as_tensor(boxes), torch.Tensor)
    blob, array = transport.new_blob((1, 3, 2, 2))
    assert isinstance(blob, torch.Tensor) and array.shape == (1, 3, 2, 2)
