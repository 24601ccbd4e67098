"""Step timers, one training step, the inference runner, and the measurements built on them (a
result dict per measurement; a failure is recorded, not raised)."""
import gc
import logging
import statistics
import time
import types

import numpy as np
import torch

from bench.models import build_ours, build_peer, configure, load_batch, peer_inputs


def is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or 'out of memory' in str(e)


def free_memory(device):
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def timed_ms(step, device):
    """Milliseconds of one ``step()``: device events on the stream on CUDA, the host clock
    elsewhere."""
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    step()
    return 1000. * (time.perf_counter() - t0)


def time_steps(step, device, args):
    """Median seconds of ``step()`` after the warm-up; (median, p10, p90, steps timed)."""
    for _ in range(args.warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times, begin = [], time.perf_counter()
    min_iters = min(3, args.iters)
    while len(times) < args.iters and (len(times) < min_iters or
                                       time.perf_counter() - begin < args.max_seconds):
        times.append(timed_ms(step, device) / 1000.)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return statistics.median(times), q(0.1), q(0.9), len(times)


def _autocast(device, precision):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=precision == 'bf16')


def train_step_parts(model, impl, inputs, device, precision):
    """One optimizer step of ``model`` on ``inputs`` in four parts, called in this order:
    ``forward()`` -> total loss, ``backward(total)``, ``optimizer_step()``, ``read(total)`` (the
    host reading the loss)."""
    params = [p for p in model.parameters() if p.requires_grad]
    # LR 0: the same kernels as training, and the random weights never drift into NaN
    optimizer = torch.optim.SGD(params, lr=0., momentum=0.9, weight_decay=1e-4)
    model.train()

    def forward():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            if impl == 'ours':
                losses = model(*inputs)['losses']
            else:
                losses = model(*inputs)
        return sum(v.float().reshape(()) for v in losses.values())
    return forward, lambda total: total.backward(), optimizer.step, lambda total: total.item()


def train_step_fn(model, impl, inputs, device, precision):
    """One optimizer step of ``model`` on ``inputs``, ending with the host reading the loss."""
    forward, backward, optimizer_step, read = train_step_parts(model, impl, inputs, device,
                                                               precision)

    def step():
        total = forward()
        backward(total)
        optimizer_step()
        return read(total)
    return step


def _time_training(model_name, impl, dataset_spec, batch_size, precision, args):
    device = args.device
    names = configure(model_name, dataset_spec, batch_size, args)
    data, im_info, gt = load_batch(names, batch_size, device)
    if impl == 'ours':
        model = build_ours(device, args.channels_last, args.compile)
        inputs = (data, im_info, gt)
    else:
        model = build_peer(model_name, device)
        inputs = peer_inputs(data, im_info, gt, model_name)
        del data
    step = train_step_fn(model, impl, inputs, device, precision)
    med, p10, p90, n = time_steps(step, device, args)
    out = dict(status='ok', step_ms=1000 * med, step_ms_p10=1000 * p10, step_ms_p90=1000 * p90,
               iters=n, images_per_s=batch_size / med)
    if device.type == 'cuda':
        out['peak_mem_gib'] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return out


def measure_training(model_name, impl, dataset_spec, batch_size, precision, args):
    """A result dict for one (implementation, batch, precision); status 'oom' when it did not
    fit. (The work runs in a function of its own, so that after an out-of-memory error nothing
    of it stays referenced and its memory can be released.)"""
    rec = {'part': 'train', 'model': model_name, 'impl': impl, 'precision': precision,
           'batch': batch_size}
    torch.backends.cudnn.benchmark = False
    try:
        rec.update(_time_training(model_name, impl, dataset_spec, batch_size, precision, args))
    except Exception as e:  # noqa: BLE001 -- one failing measurement must not end the run
        if is_oom(e):
            rec['status'] = 'oom'
        else:
            rec['status'] = 'error'
            rec['error'] = '%s: %s' % (type(e).__name__, str(e).splitlines()[0] if str(e) else '')
            logging.getLogger(__name__).error('train %s %s %s batch %d failed', model_name, impl,
                                              precision, batch_size, exc_info=True)
    free_memory(args.device)
    return rec




def inference_runner(model_name, impl, data, im_info, gt, args):
    """(model in eval mode, ``run(lo, hi)``): the detections per image of images lo..hi-1 --
    ``model.detect`` for ours, torchvision's forward on its own inputs for the peer. Call under
    ``torch.no_grad()``."""
    device = args.device
    if impl == 'ours':
        model = build_ours(device, args.channels_last, args.compile).eval()

        def run(lo, hi):
            return [r['boxes'].shape[0] for r in model.detect(data[lo:hi], im_info[lo:hi])]
    else:
        model = build_peer(model_name, device).eval()
        images, _ = peer_inputs(data, im_info, gt, model_name)

        def run(lo, hi):
            return [r['boxes'].shape[0] for r in model(images[lo:hi])]
    return model, run


def measure_inference(model_name, impl, dataset_spec, args):
    """ms/image at batch 1 (over distinct images) and images/s at ``--infer_batch``."""
    device = args.device
    torch.backends.cudnn.benchmark = True
    nb = args.infer_batch
    names = configure(model_name, dataset_spec, max(nb, 2), args)
    data, im_info, gt = load_batch(names, max(nb, 2), device)
    model, run = inference_runner(model_name, impl, data, im_info, gt, args)
    rec = {'part': 'infer', 'model': model_name, 'impl': impl, 'precision': 'fp32',
           'status': 'ok'}
    with torch.no_grad():
        counter = {'i': 0, 'dets': []}

        def one():
            i = counter['i'] % nb
            counter['i'] += 1
            counter['dets'].extend(run(i, i + 1))
        med, _, _, n = time_steps(one, device, args)
        rec.update(batch1_ms=1000 * med, batch1_iters=n)
        rec['detections_per_image'] = float(np.mean(counter['dets']))
        med, _, _, n = time_steps(lambda: run(0, nb), device, args)
        rec.update(batch=nb, batchN_images_per_s=nb / med, batchN_iters=n)
    del model
    free_memory(device)
    torch.backends.cudnn.benchmark = False
    return rec


def batch_sizes_to_time(model_name, dataset_spec, precision, args):
    """2 and the largest power of two that fits (one step of ours per size tried), or
    ``--batch_sizes``."""
    if args.batch_sizes:
        return list(args.batch_sizes)
    sizes, fits, bs = [2], 2, 4
    # one step tells whether a batch fits (the timed run falls back if a later step does not)
    probe = types.SimpleNamespace(**dict(vars(args), warmup=0, iters=1, max_seconds=0.))
    while bs <= args.max_batch:
        rec = measure_training(model_name, 'ours', dataset_spec, bs, precision, probe)
        print('  search %s %s batch %d: %s' % (model_name, precision, bs, rec['status']),
              flush=True)
        if rec['status'] != 'ok':
            break
        fits, bs = bs, bs * 2
    if fits != 2:
        sizes.append(fits)
    return sizes
