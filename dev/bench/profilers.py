"""Where the time of a step goes: torch.profiler's top operators, our training step's host time by
stage, and the source lines of a step's host-device synchronisations."""
import os
import time

import torch

from bench import ROOT
from bench.models import build_ours, configure, load_batch
from bench.timing import free_memory, train_step_fn, train_step_parts


def profile_training(model_name, dataset_spec, args):
    """Print the top operators of 3 steps of ours at batch 2 and count one step's syncs."""
    device = args.device
    names = configure(model_name, dataset_spec, 2, args)
    data, im_info, gt = load_batch(names, 2, device)
    model = build_ours(device, args.channels_last, args.compile)
    step = train_step_fn(model, 'ours', (data, im_info, gt), device, 'fp32')
    for _ in range(2):
        step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    sort = 'self_cpu_time_total'
    if device.type == 'cuda':
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort = 'self_cuda_time_total'
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            step()
    events = prof.key_averages()
    # GPU busy time: the kernels' and copies' own events (operators' "self" device time would
    # count their kernels a second time)
    kernel_us = sum(getattr(e, 'self_device_time_total', 0) or 0 for e in events
                    if str(getattr(e, 'device_type', '')).endswith('CUDA'))
    print('\n-- %s training, batch 2, fp32: top operators of 3 steps (device time per step: '
          '%.1f ms)' % (model_name, kernel_us / 3000.))
    print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
    rows, step_ms = host_breakdown(model, train_step_parts(model, 'ours', (data, im_info, gt),
                                                           device, 'fp32'))
    print('-- host time by stage, %s training, batch 2, fp32 (mean of 20 steps, host clock; '
          'a stage that reads a device value waits inside its own time): %.1f ms per step'
          % (model_name, step_ms))
    for name, ms in rows:
        print('   %-28s %7.2f ms  %5.1f%%' % (name, ms, 100. * ms / step_ms))
    if device.type == 'cuda':
        count, where = sync_sites(step)
        print('-- host-device synchronisations in one training step: %d' % count)
        for key, n in sorted(where.items(), key=lambda kv: -kv[1])[:20]:
            print('   %4d  %s' % (n, key))
    del model
    free_memory(device)


def host_breakdown(model, step_parts, steps=20):
    """Host time by stage of our training step: (stage, ms per step) pairs, measured by wrapping
    the stages' functions and modules with host clocks (no synchronisation added: a stage that
    reads a device value waits for the device inside its own time). ``step_parts`` is
    ``(forward, backward, optimizer_step, read_loss)``, called in that order each step."""
    import pydetectron.modeling.losses as L
    import pydetectron.modeling.targets as T
    acc = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[name] = acc.get(name, 0.) + time.perf_counter() - t0
        return wrapper

    patches = []   # (object, attribute, original, was an instance attribute)

    def patch(obj, attr, name):
        if obj is None or not hasattr(obj, attr):
            return
        own = attr in vars(obj)
        orig = getattr(obj, attr)
        patches.append((obj, attr, orig, own))
        setattr(obj, attr, timed(name, orig))

    for mod_name, stage in (('Conv_Body', 'body (backbone + FPN)'), ('RPN', 'RPN head'),
                            ('Box_Head', 'box head'), ('Box_Outs', 'box head'),
                            ('Mask_Head', 'mask head'), ('Mask_Outs', 'mask head'),
                            ('Keypoint_Head', 'keypoint head'), ('Keypoint_Outs', 'keypoint head')):
        patch(getattr(model, mod_name, None), 'forward', stage)
    patch(getattr(model, 'RPN', None), 'add_proposals', 'proposals')
    for attr, stage in (('pack_gt', 'ground truth packing'), ('pack_polygons', 'ground truth packing'),
                        ('rpn_anchor_targets_flat', 'RPN targets'),
                        ('label_proposals', 'Fast R-CNN labels'), ('sample_rois', 'RoI sampling'),
                        ('mask_rcnn_targets', 'mask targets'),
                        ('keypoint_rcnn_targets', 'keypoint targets')):
        patch(T, attr, stage)
    for attr, stage in (('rpn_losses_flat', 'RPN losses'), ('fast_rcnn_losses', 'R-CNN losses'),
                        ('mask_rcnn_losses', 'R-CNN losses'), ('keypoint_losses', 'R-CNN losses')):
        patch(L, attr, stage)
    forward, backward, opt_step, read = step_parts
    total = {'step': 0., 'forward': 0., 'backward': 0., 'optimizer': 0., 'loss read (sync)': 0.}
    try:
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = forward()
            t1 = time.perf_counter()
            backward(loss)
            t2 = time.perf_counter()
            opt_step()
            t3 = time.perf_counter()
            read(loss)
            t4 = time.perf_counter()
            for k, v in (('step', t4 - t0), ('forward', t1 - t0), ('backward', t2 - t1),
                         ('optimizer', t3 - t2), ('loss read (sync)', t4 - t3)):
                total[k] += v
    finally:
        for obj, attr, orig, own in reversed(patches):
            if own:
                setattr(obj, attr, orig)
            else:
                delattr(obj, attr)
    rows = [(k, 1000. * v / steps) for k, v in acc.items()]
    rows.append(('forward, the rest', 1000. * (total['forward'] - sum(acc.values())) / steps))
    rows += [(k, 1000. * total[k] / steps) for k in ('backward', 'optimizer', 'loss read (sync)')]
    return rows, 1000. * total['step'] / steps


def sync_sites(fn):
    """Run ``fn()`` once on CUDA, counting its host-device synchronisations by source line."""
    import warnings
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    where = {}
    for w in caught:
        key = '%s:%d' % (os.path.relpath(w.filename, ROOT), w.lineno)
        where[key] = where.get(key, 0) + 1
    return len(caught), where


def profile_inference(model_name, dataset_spec, args):
    """Print, for ours at batch 1: the device time per image against the wall time (host-bound
    when the device idles), the top operators by host time, and the syncs of one image."""
    device = args.device
    torch.backends.cudnn.benchmark = True
    names = configure(model_name, dataset_spec, 2, args)
    data, im_info, _ = load_batch(names, 2, device)
    model = build_ours(device, args.channels_last, args.compile).eval()
    n = 10
    with torch.no_grad():
        for _ in range(3):
            model.detect(data[:1], im_info[:1])
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == 'cuda':
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=activities) as prof:
            for i in range(n):
                model.detect(data[i % 2:i % 2 + 1], im_info[i % 2:i % 2 + 1])
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
        wall_ms = 1000. * (time.perf_counter() - t0) / n
        events = prof.key_averages()
        kernel_us = sum(getattr(e, 'self_device_time_total', 0) or 0 for e in events
                        if str(getattr(e, 'device_type', '')).endswith('CUDA'))
        print('\n-- %s inference, batch 1: device time %.1f ms per image, wall %.1f ms per image '
              '(under the profiler)' % (model_name, kernel_us / 1000. / n, wall_ms))
        print(events.table(sort_by='self_cpu_time_total', row_limit=15,
                           max_name_column_width=60))
        if device.type == 'cuda':
            detect_one = model.detect
            count, where = sync_sites(lambda: detect_one(data[:1], im_info[:1]))
            print('-- host-device synchronisations in one image: %d' % count)
            for key, k in sorted(where.items(), key=lambda kv: -kv[1])[:20]:
                print('   %4d  %s' % (k, key))
    del model
    torch.backends.cudnn.benchmark = False
    free_memory(device)
