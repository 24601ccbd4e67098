"""What a benchmark run prints and writes: the per-measurement lines, the final tables, the
machine's description, and the results list that rewrites ``--json`` after every record."""
import datetime
import json
import math
import os
import platform

import torch

from bench.options import PRECISIONS


def print_training(rec):
    if rec['status'] == 'ok':
        what = '%.1f images/s (%.0f ms/step, %d steps)%s' % (
            rec['images_per_s'], rec['step_ms'], rec['iters'],
            ', peak %.2f GiB' % rec['peak_mem_gib'] if 'peak_mem_gib' in rec else '')
    else:
        what = rec['status'] + (' (%s)' % rec['error'] if 'error' in rec else '')
    print('  train %s %s %s batch %d: %s' % (rec['model'], rec['impl'], rec['precision'],
                                             rec['batch'], what), flush=True)



def _fmt(v, spec='%.1f'):
    return '—' if v is None else spec % v


def print_tables(results, peer):
    train = [r for r in results if r['part'] == 'train']
    print('\n== training (images/s; peak GPU memory in GiB)')
    print('%-9s %-5s %5s %10s %10s %7s %9s %9s' % (
        'model', 'prec', 'batch', 'ours', 'torchvis' if peer else '', 'ratio' if peer else '',
        'mem ours', 'mem tv' if peer else ''))
    keys = sorted({(r['model'], r['precision'], r['batch']) for r in train},
                  key=lambda k: (k[0], PRECISIONS.index(k[1]), k[2]))
    for m, prec, b in keys:
        row = {r['impl']: r for r in train if (r['model'], r['precision'], r['batch']) == (m, prec, b)}
        ours, tv = row.get('ours', {}), row.get('torchvision', {})
        o, t = ours.get('images_per_s'), tv.get('images_per_s')
        ratio = o / t if o and t else None
        print('%-9s %-5s %5d %10s %10s %7s %9s %9s' % (
            m, prec, b, _fmt(o) if ours.get('status') == 'ok' else ours.get('status', ''),
            (_fmt(t) if tv.get('status') == 'ok' else tv.get('status', '')) if peer else '',
            _fmt(ratio, '%.2fx') if peer else '', _fmt(ours.get('peak_mem_gib'), '%.2f'),
            _fmt(tv.get('peak_mem_gib'), '%.2f') if peer else ''))
    infer = [r for r in results if r['part'] == 'infer']
    if infer:
        print('\n== inference, fp32 (TF32): ms/image at batch 1, images/s at batch N, '
              'detections/image')
        print('%-9s %-12s %10s %6s %12s %10s' % ('model', 'impl', 'ms @1', 'N', 'img/s @N',
                                                 'dets/img'))
        for r in infer:
            if r['status'] != 'ok':
                print('%-9s %-12s %s' % (r['model'], r['impl'], r['status']))
                continue
            print('%-9s %-12s %10.1f %6d %12.1f %10.1f' % (
                r['model'], r['impl'], r['batch1_ms'], r['batch'], r['batchN_images_per_s'],
                r['detections_per_image']))
        for m in sorted({r['model'] for r in infer}):
            o = [r for r in infer if r['model'] == m and r['impl'] == 'ours' and
                 r['status'] == 'ok']
            t = [r for r in infer if r['model'] == m and r['impl'] == 'torchvision' and
                 r['status'] == 'ok']
            if o and t:
                print('%-9s ratio ours/torchvision: batch 1 speed %.2fx, batch %d %.2fx' % (
                    m, t[0]['batch1_ms'] / o[0]['batch1_ms'], o[0]['batch'],
                    o[0]['batchN_images_per_s'] / t[0]['batchN_images_per_s']))
    loader = [r for r in results if r['part'] == 'loader']
    if loader:
        print('\n== data loader (synthetic JPEGs, 2 images per batch)')
        print('%8s %10s %12s %18s' % ('workers', 'images/s', 'per worker', 'per worker-CPU-s'))
        for r in loader:
            print('%8d %10.1f %12.1f %18.1f' % (r['workers'], r['images_per_s'],
                                               r['images_per_s_per_worker'],
                                               r['images_per_worker_cpu_s']))


def machine_info(device):
    info = {'date': datetime.date.today().isoformat(), 'host': platform.node(),
            'platform': platform.platform(), 'python': platform.python_version(),
            'torch': torch.__version__, 'cpus': os.cpu_count(), 'device': str(device)}
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
        info['cuda'] = torch.version.cuda
    try:
        import torchvision
        info['torchvision'] = torchvision.__version__
    except ImportError:
        pass
    return info



class Results(list):
    """The result records; with ``--json``, the file is rewritten after each one, so a run
    stopped by a time limit keeps what it measured."""

    def __init__(self, args, info):
        super().__init__()
        self.path = args.json
        self.head = {'machine': info, 'args': {
            k: sorted(v) if isinstance(v, set) else str(v) if isinstance(v, torch.device) else v
            for k, v in vars(args).items()}}

    def append(self, rec):
        super().append(rec)
        if self.path:
            # NaN (an unmeasurable CPU time) is not JSON: null
            finite = [{k: None if isinstance(v, float) and not math.isfinite(v) else v
                       for k, v in r.items()} for r in self]
            with open(self.path + '.tmp', 'w') as f:
                json.dump(dict(self.head, results=finite), f, indent=1)
            os.replace(self.path + '.tmp', self.path)

