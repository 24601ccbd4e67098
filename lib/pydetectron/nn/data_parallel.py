"""The seed's dict-aware ``DataParallel``: single-process multi-GPU with pre-split minibatches.

The training loader already builds one minibatch per GPU (``roi_data/loader.py``): every input
is a list with one entry per device, entry i for device i, and the blobs of different entries
may have different sizes (each is padded only to its own largest image). So nothing is chunked
here; entry i of every input goes to device i:

    model = DataParallel(Generalized_RCNN(), cpu_keywords=['roidb'])
    out = model(data=[blob0, blob1], im_info=[info0, info1], roidb=[roidb0, roidb1])

* Tensors inside an entry (also nested in lists / tuples / dicts) are copied to its device,
  except the keyword inputs named in ``cpu_keywords`` (``roidb``: per-image ground truth, stays on
  the CPU and the model moves what it needs).
* One device: the module runs there directly. Several: the module is replicated and the replicas
  run in threads, each on its device, under the caller's autocast settings.
* Outputs are gathered on ``output_device``: dicts key by key, lists / tuples element-wise,
  0-dim tensors (losses, metrics) **averaged** over devices (Detectron scales each GPU's loss by
  1 / NUM_GPUS, so its gradients are a mean too), other tensors concatenated along dim 0.
  ``batch_outputs=False`` returns the list of per-device outputs (each moved to
  ``output_device``) instead.
* No CUDA device (``device_ids`` empty): a plain call on the single entry of each input, so the
  same training loop runs on the CPU.
"""
import threading
from contextlib import ExitStack

import torch


def _to_device(obj, device):
    """Copy every tensor in ``obj`` (nested lists / tuples / dicts) to ``device`` (None: as is)."""
    if device is None:
        return obj
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return type(obj)((k, _to_device(v, device)) for k, v in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, '_fields'):  # namedtuple
        return type(obj)(*(_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def scatter_minibatches(kwargs, devices, cpu_keywords=()):
    """Per-device keyword dicts from per-device input lists.

    kwargs: {name: [entry for device 0, entry for device 1, ...]}; returns a list of
    {name: entry} with tensors moved to the entry's device (except ``cpu_keywords``).
    """
    n = None
    for k, v in kwargs.items():
        if not isinstance(v, (list, tuple)):
            raise TypeError('DataParallel expects every input as a list with one entry per '
                            'device; {!r} is a {}'.format(k, type(v).__name__))
        if n is None:
            n = len(v)
        elif len(v) != n:
            raise ValueError('DataParallel inputs have different numbers of per-device entries: '
                             '{}'.format({k2: len(v2) for k2, v2 in kwargs.items()}))
    n = n or 0
    if n == 0 or n > len(devices):
        raise ValueError('DataParallel got {} per-device entries for {} device(s) {}'.format(
            n, len(devices), [str(d) for d in devices]))
    out = []
    for i in range(n):
        entry = {}
        for k, v in kwargs.items():
            entry[k] = v[i] if k in cpu_keywords else _to_device(v[i], devices[i])
        out.append(entry)
    return out


def gather_outputs(outputs, output_device):
    """Merge per-device outputs on ``output_device`` (see the module docstring)."""
    first = outputs[0]
    if torch.is_tensor(first):
        moved = [o.to(output_device) for o in outputs]
        if len(moved) == 1:
            return moved[0]
        if first.dim() == 0:
            return torch.stack(moved).mean()
        return torch.cat(moved, dim=0)
    if first is None:
        return None
    if isinstance(first, dict):
        keys = list(first)
        for o in outputs[1:]:
            if set(o) != set(keys):
                raise ValueError('DataParallel: replicas returned different keys: {} vs {}'.format(
                    sorted(keys), sorted(o)))
        return type(first)((k, gather_outputs([o[k] for o in outputs], output_device))
                           for k in keys)
    if isinstance(first, (list, tuple)):
        if any(len(o) != len(first) for o in outputs):
            raise ValueError('DataParallel: replicas returned sequences of different lengths')
        return type(first)(gather_outputs(list(x), output_device) for x in zip(*outputs))
    if isinstance(first, float):
        return sum(outputs) / len(outputs)
    return list(outputs)


class DataParallel(torch.nn.Module):
    """Data parallelism over pre-split per-device minibatches (see the module docstring).

    Args:
        module: the model (moved to the first device).
        device_ids: CUDA device indices or ``torch.device`` objects; default every visible GPU,
            or none on a machine without CUDA.
        output_device: where outputs are gathered (default the first device).
        cpu_keywords: keyword inputs left on the CPU.
        batch_outputs: gather the outputs (True) or return them per device (False).
    """

    def __init__(self, module, device_ids=None, output_device=None, cpu_keywords=('roidb',),
                 minibatch=True, batch_outputs=True):
        super().__init__()
        if not minibatch:
            raise NotImplementedError('DataParallel only takes pre-split per-device minibatches '
                                      '(minibatch=True), as the training loader produces them')
        self.module = module
        if device_ids is None:
            device_ids = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        self.devices = [d if isinstance(d, torch.device) else torch.device('cuda', d)
                        for d in device_ids]
        self.device_ids = list(device_ids)
        self.cpu_keywords = tuple(cpu_keywords)
        self.batch_outputs = batch_outputs
        self.output_device = (torch.device(output_device) if isinstance(output_device, str) else
                              output_device if isinstance(output_device, torch.device) else
                              torch.device('cuda', output_device) if output_device is not None
                              else (self.devices[0] if self.devices else None))
        if self.devices:
            self.module.to(self.devices[0])

    def forward(self, *args, **kwargs):
        if args:
            raise TypeError('DataParallel takes keyword inputs only (data=..., im_info=..., '
                            'roidb=...), each a list with one entry per device')
        if not self.devices:
            entries = scatter_minibatches(kwargs, [None], self.cpu_keywords)
            return self.module(**entries[0])
        per_device = scatter_minibatches(kwargs, self.devices, self.cpu_keywords)
        devices = self.devices[:len(per_device)]
        if len(devices) == 1:
            outputs = [self.module(**per_device[0])]
        else:
            replicas = self.replicate(self.module, devices)
            outputs = self.parallel_apply(replicas, per_device, devices)
        if self.batch_outputs:
            return self.gather(outputs, self.output_device)
        return [self.gather([o], self.output_device) for o in outputs]

    def replicate(self, module, devices):
        return torch.nn.parallel.replicate(module, devices, detach=not torch.is_grad_enabled())

    def parallel_apply(self, replicas, kwargs_list, devices):
        """Run replica i on ``kwargs_list[i]`` in its own thread, on ``devices[i]``, under the
        caller's grad mode and autocast settings (autocast state is per thread)."""
        grad_enabled = torch.is_grad_enabled()
        autocast = {t: (torch.is_autocast_enabled(t), torch.get_autocast_dtype(t))
                    for t in ('cuda', 'cpu')}
        results = [None] * len(replicas)

        def worker(i, module, kw, device):
            torch.set_grad_enabled(grad_enabled)
            try:
                with ExitStack() as stack:
                    if device.type == 'cuda':
                        stack.enter_context(torch.cuda.device(device))
                        stack.enter_context(torch.cuda.stream(torch.cuda.current_stream(device)))
                    enabled, dtype = autocast[device.type if device.type in autocast else 'cpu']
                    if enabled:
                        stack.enter_context(torch.autocast(device.type, dtype=dtype))
                    results[i] = ('ok', module(**kw))
            except BaseException as e:  # re-raised in the caller's thread below
                results[i] = ('error', e)

        threads = [threading.Thread(target=worker, args=(i, m, kw, d))
                   for i, (m, kw, d) in enumerate(zip(replicas, kwargs_list, devices))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        outputs = []
        for i, (status, value) in enumerate(results):
            if status == 'error':
                raise RuntimeError('DataParallel: replica {} on {} failed: {}'.format(
                    i, devices[i], value)) from value
            outputs.append(value)
        return outputs

    def gather(self, outputs, output_device):
        return gather_outputs(outputs, output_device)
