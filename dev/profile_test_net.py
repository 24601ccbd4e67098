#!/usr/bin/env python
"""Where test_net's time goes on real photos: one pass of ``core.test_engine.test_net`` (what
``tools/test_net.py`` runs, set up as ``dev/benchmark_test_net.py`` does it) under
``torch.profiler``, after untimed passes, with its stages labelled.

Stages (record_function ranges): the model's parts (``Conv_Body``, ``RPN``, ``Box_Head``,
``Box_Outs``, ``Mask_Head``, ``Mask_Outs``), ``core.test``'s steps (``im_detect_bbox``,
``box_results_for_images``, ``im_detect_mask``, ``_segms_of_image``) and ``core.mask_results``'
(``paste_masks``, ``encode_masks``, ``_run_lengths``, pycocotools' ``frPyObjects``).

Writes to DIR: ``summary.json`` (per image: the pass's wall time; the GPU's busy time, the union of
its kernels and copies; the host's time blocked in synchronising calls; each stage's host and
device time), ``ops.txt`` (the profiler's operator table by host time, and by device time) and
``trace.json.gz`` (the Chrome trace).

    python dev/profile_test_net.py --out prof --max-images 20
"""
import argparse
import gzip
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_test_net  # noqa: E402

MODEL_PARTS = ('Conv_Body', 'RPN', 'Box_Head', 'Box_Outs', 'Mask_Head', 'Mask_Outs')
TEST_STEPS = ('im_detect_bbox', 'box_results_for_images', 'im_detect_mask', '_segms_of_image')
MASK_STEPS = ('paste_masks', 'encode_masks', '_run_lengths')
# host calls that wait for the device
SYNCS = ('cudaStreamSynchronize', 'cudaDeviceSynchronize', 'cudaEventSynchronize',
         'cudaMemcpy', 'cudaMemcpyAsync')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='folder for summary.json, ops.txt, trace')
    p.add_argument('--warmup', type=int, default=2, help='untimed passes before the profile')
    p.add_argument('--no-trace', action='store_true', help='skip trace.json.gz')
    args, rest = p.parse_known_args(argv)
    return args, benchmark_test_net.parse_args(rest)


def _wrap(module, name, record_function, undo):
    fn = getattr(module, name)

    def wrapped(*a, **k):
        with record_function('stage::' + name):
            return fn(*a, **k)
    setattr(module, name, wrapped)
    undo.append(lambda: setattr(module, name, fn))


def label_parts(model, parts):
    """record_function ranges around the forward passes of ``model``'s named parts."""
    from torch.profiler import record_function
    for name in parts:
        part = getattr(model, name, None)
        if part is None:
            continue
        ranges = []

        def enter(mod, inputs, name=name, ranges=ranges):
            r = record_function('stage::' + name)
            r.__enter__()
            ranges.append(r)

        def leave(mod, inputs, output, ranges=ranges):
            ranges.pop().__exit__(None, None, None)
        part.register_forward_pre_hook(enter)
        part.register_forward_hook(leave)


def label_stages(model):
    """record_function ranges around the model's parts and the test path's steps; returns a
    function that takes the test path's ones away again."""
    import pycocotools.mask as mask_util
    from torch.profiler import record_function
    from pydetectron.core import mask_results, test
    undo = []
    for name in TEST_STEPS:
        _wrap(test, name, record_function, undo)
    for name in MASK_STEPS:
        _wrap(mask_results, name, record_function, undo)
    frpy = mask_util.frPyObjects

    def fr_py_objects(*a):
        with record_function('stage::frPyObjects'):
            return frpy(*a)
    real_mask_util = mask_results.mask_util
    mask_results.mask_util = type('mask_util', (), {'frPyObjects': staticmethod(fr_py_objects)})
    undo.append(lambda: setattr(mask_results, 'mask_util', real_mask_util))
    label_parts(model, MODEL_PARTS)

    def unlabel():
        for f in reversed(undo):
            f()
    return unlabel


def load_tool(name):
    """tools/<name>.py as a module (its main() runs the tool in this process)."""
    import importlib.util
    path = os.path.join(benchmark_test_net.ROOT, 'tools', name + '.py')
    spec = importlib.util.spec_from_file_location(name + '_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _union(intervals):
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def summarize(trace, count, wall_s, unit='image'):
    """Per-``unit`` figures (ms) from a Chrome trace's events over ``count`` units."""
    events = [e for e in trace.get('traceEvents', []) if e.get('ph') == 'X']
    gpu = [(e['ts'], e['ts'] + e['dur']) for e in events
           if e.get('cat') in ('kernel', 'gpu_memcpy', 'gpu_memset')]
    syncs, launches = {}, 0
    for e in events:
        if e.get('cat') == 'cuda_runtime':
            if e['name'] in SYNCS:
                s = syncs.setdefault(e['name'], [0, 0.0])
                s[0] += 1
                s[1] += e['dur']
            elif 'Launch' in e['name']:
                launches += 1
    kernels = sum(1 for e in events if e.get('cat') == 'kernel')
    n = float(count)
    return {
        unit + 's': count, 'wall_ms_per_' + unit: 1000.0 * wall_s / n,
        'gpu_busy_ms_per_' + unit: _union(gpu) / 1000.0 / n,
        'kernels_per_' + unit: kernels / n,
        'launches_per_' + unit: launches / n,
        'host_blocked_ms_per_' + unit: sum(s[1] for s in syncs.values()) / 1000.0 / n,
        'sync_calls_per_' + unit: {k: round(v[0] / n, 1) for k, v in syncs.items()},
        'sync_ms_per_' + unit: {k: round(v[1] / 1000.0 / n, 3) for k, v in syncs.items()},
    }


def stage_table(prof, count, unit='image'):
    """Each labelled stage's calls, host and device time per ``unit``."""
    rows = {}
    for a in prof.key_averages():
        if not a.key.startswith('stage::'):
            continue
        dev = getattr(a, 'device_time_total', None)
        if dev is None:
            dev = getattr(a, 'cuda_time_total', 0.0)
        row = rows.setdefault(a.key[7:], {'calls_per_' + unit: 0.0, 'host_ms_per_' + unit: 0.0,
                                          'device_ms_per_' + unit: 0.0})
        # (a CUDA range appears twice: its host half, and its device half with no host time)
        if a.cpu_time_total:
            row['calls_per_' + unit] = round(a.count / float(count), 2)
            row['host_ms_per_' + unit] = round(a.cpu_time_total / 1000.0 / count, 3)
        row['device_ms_per_' + unit] = max(row['device_ms_per_' + unit],
                                          round(dev / 1000.0 / count, 3))
    return rows


def write_ops_table(prof, path, device):
    """The profiler's operator tables: by host time, then by device time."""
    with open(path, 'w') as f:
        f.write(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=60))
        f.write('\n\n')
        sort = 'device_time_total' if device != 'cpu' else 'cpu_time_total'
        try:
            f.write(prof.key_averages().table(sort_by=sort, row_limit=40))
        except (AttributeError, KeyError, ValueError):
            f.write(prof.key_averages().table(sort_by='cuda_time_total', row_limit=40))


def main(argv=None):
    args, bargs = parse_args(argv)
    sys.path.insert(0, os.path.join(benchmark_test_net.ROOT, 'lib'))
    import torch
    from torch.profiler import ProfilerActivity, profile
    bargs.dataset = bargs.dataset or benchmark_test_net.default_dataset()
    torch.backends.cudnn.benchmark = bool(bargs.cudnn_benchmark)
    from pydetectron.utils.errors import UserInputError
    try:
        ours = benchmark_test_net.Ours(bargs)
    except UserInputError as e:     # a bad --shape_buckets, --compile, --dataset: one line
        print('profile_test_net.py: error: %s' % e, file=sys.stderr)
        raise SystemExit(2)
    device = torch.device(bargs.device)
    unlabel = label_stages(ours.model)
    try:
        for _ in range(args.warmup):
            n, _ = ours.run()
        activities = [ProfilerActivity.CPU]
        if device.type == 'cuda':
            activities.append(ProfilerActivity.CUDA)
        os.makedirs(args.out, exist_ok=True)
        benchmark_test_net._sync(device)
        with profile(activities=activities) as prof:
            t = time.perf_counter()
            n, per_image = ours.run()
            benchmark_test_net._sync(device)
            wall = time.perf_counter() - t
    finally:
        unlabel()
    return write_profile(prof, args.out, n, wall, 'image', device.type, args.no_trace, argv,
                         detections_per_image=per_image)


def write_profile(prof, out, count, wall_s, unit, device_type, no_trace, argv, **extra):
    """Write a finished profile of ``count`` units to ``out``: ``summary.json`` (``summarize``,
    ``extra``, the stages, the device, torch and ``argv``), ``ops.txt`` and, unless
    ``no_trace``, ``trace.json.gz``; print the summary and return it."""
    import torch
    os.makedirs(out, exist_ok=True)
    trace_path = os.path.join(out, 'trace.json')
    prof.export_chrome_trace(trace_path)
    with open(trace_path) as f:
        trace = json.load(f)
    summary = summarize(trace, count, wall_s, unit=unit)
    summary.update(extra)
    summary['stages'] = stage_table(prof, count, unit=unit)
    summary['device'] = torch.cuda.get_device_name() if device_type == 'cuda' else 'cpu'
    summary['torch'] = torch.__version__
    summary['argv'] = sys.argv[1:] if argv is None else list(argv)
    write_ops_table(prof, os.path.join(out, 'ops.txt'), device_type)
    if no_trace:
        os.remove(trace_path)
    else:
        with open(trace_path, 'rb') as src, gzip.open(trace_path + '.gz', 'wb') as dst:
            shutil.copyfileobj(src, dst)
        os.remove(trace_path)
    write_summary(out, summary)
    return summary


def write_summary(out, summary):
    """``summary`` to ``out``/summary.json (the folder made if needed), and printed."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    main()
