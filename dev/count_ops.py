"""Count the ATen operators of one training step (or one inference) of a benchmark model, by the
pydetectron source file (and line) that issued them -- the host-side work of a step, which is
what limits small-batch training on a fast GPU. Runs on the CPU; operator counts do not depend
on the device.

    python dev/count_ops.py                        # Mask R-CNN training step, by file
    python dev/count_ops.py --infer --lines 30     # one inference, the 30 busiest lines
    python dev/count_ops.py --fixed-targets        # the step's targets as a GPU makes them
    python dev/count_ops.py --channels_last --layouts   # where maps change memory format

``--layouts`` lists, by source line, the operators that turn a channels-last map into an NCHW
one or back (a copy of the whole map that a channels-last step pays on every call: the strided
copies and adds of a bf16 profile), with the megabytes each moves a step. On the CPU the
extension's RoI ops give NCHW gradients for channels-last levels, where their CUDA kernels keep
channels-last (``roi_align_fpn``): autograd's sums of those show under "backward / optimizer".

Operators issued outside pydetectron's code (autograd's backward, the optimizer) are counted
under "backward / optimizer".
"""
import argparse
import collections
import os
import sys
import tempfile
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.join(ROOT, 'dev'))
from bench import models, options, timing  # noqa: E402
from bench.data import make_synthetic_coco  # noqa: E402


def _caller():
    """'file:line' of the innermost pydetectron frame on the stack, or 'backward / optimizer'
    (an operator autograd or the optimizer issued)."""
    for frame in reversed(traceback.extract_stack(limit=60)):
        if '%spydetectron%s' % (os.sep, os.sep) in frame.filename:
            return '%s:%d' % (os.path.relpath(frame.filename, ROOT), frame.lineno)
    return 'backward / optimizer'


class CountOps(TorchDispatchMode):
    """Counts every operator by the innermost pydetectron frame that called it."""

    def __init__(self):
        super().__init__()
        self.by_line = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.by_line[_caller()] += 1
        return func(*args, **(kwargs or {}))


def _format(t):
    """'nhwc', 'nchw', or None for what is not an unambiguous 4-D map (one channel or one pixel
    is both layouts; other strides are neither)."""
    if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.size(1) == 1 or t[0, 0].numel() == 1:
        return None
    if t.is_contiguous():
        return 'nchw'
    if t.is_contiguous(memory_format=torch.channels_last):
        return 'nhwc'
    return None


def _tensors(tree):
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


class LayoutChanges(TorchDispatchMode):
    """Records the operators with a 4-D output laid out otherwise than an input map of its shape
    (a layout conversion, or an elementwise operator over maps of both layouts: a strided
    kernel), by the innermost pydetectron frame (count, megabytes of those outputs, kinds)."""

    def __init__(self):
        super().__init__()
        self.by_line = collections.defaultdict(lambda: [0, 0.0, set()])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = collections.defaultdict(set)
        for t in _tensors((args, kwargs)):
            if _format(t):
                ins[tuple(t.shape)].add(_format(t))
        if not ins:
            return out
        for t in _tensors(out):
            now = _format(t)
            others = ins.get(tuple(t.shape), set()) - {now}
            if now and others:
                was = '+'.join(sorted(ins[tuple(t.shape)]))
                rec = self.by_line[_caller()]
                rec[0] += 1
                rec[1] += t.numel() * t.element_size() / 2 ** 20
                rec[2].add('%s %s->%s' % (func.__name__, was, now))
                break
        return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='mask', choices=sorted(models.MODELS))
    p.add_argument('--image_size', default='256x416', help='HEIGHTxWIDTH of the images')
    p.add_argument('--batch', type=int, default=2, help='images per step')
    p.add_argument('--infer', action='store_true', help='count one model.detect of one image')
    p.add_argument('--lines', type=int, default=0, help='also list the N busiest source lines')
    p.add_argument('--fixed-targets', action='store_true',
                   help="the training targets in fixed shapes, as on a GPU (the model's "
                        "fixed_target_shapes; the CPU default is the unpadded targets)")
    p.add_argument('--amp', action='store_true',
                   help='the training step under bfloat16 autocast (as train_net_step --amp)')
    p.add_argument('--channels_last', action='store_true',
                   help="the model channels-last (the tools' --channels_last)")
    p.add_argument('--cfg', default=None,
                   help='a config to build instead of the benchmark model (e.g. '
                        'configs/gn_baselines/scratch_e2e_mask_rcnn_R-50-FPN_3x_gn.yaml)')
    p.add_argument('--layouts', action='store_true',
                   help='list the operators that change a map between NCHW and channels-last '
                        '(instead of counting operators)')
    a = p.parse_args(argv)
    if a.cfg is not None and not os.path.isfile(os.path.join(ROOT, a.cfg)):
        p.error('--cfg: %s not found' % a.cfg)
    args = options.parse_args(['--device', 'cpu', '--no-peer', '--image_size', a.image_size])
    args.device = torch.device('cpu')
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_synthetic_coco(tmp, 2 * a.batch, args.height, args.width, args.objects,
                                   a.model == 'keypoint')
        names = models.configure(a.model, spec, a.batch, args, cfg_file=a.cfg)
        data, im_info, gt = models.load_batch(names, a.batch, args.device)
        model = models.build_ours(args.device, a.channels_last)
        if a.fixed_targets:
            model.fixed_target_shapes = True
        if a.infer:
            model.eval()

            def run():
                with torch.no_grad():
                    model.detect(data[:1], im_info[:1])
        else:
            run = timing.train_step_fn(model, 'ours', (data, im_info, gt), args.device,
                                       'bf16' if a.amp else 'fp32')
        run()  # warm-up: caches and lazy initialisation are not part of a step
        if a.layouts:
            changes = LayoutChanges()
            with changes:
                run()
            return _print_layouts(a, changes)
        counter = CountOps()
        with counter:
            run()
    by_file = collections.Counter()
    for where, n in counter.by_line.items():
        by_file[where.rsplit(':', 1)[0]] += n
    print('%s %s%s, %d image(s) of %s: %d ATen operators' % (
        a.model, 'inference' if a.infer else 'training step', ' (bf16 autocast)' if a.amp else '',
        1 if a.infer else a.batch,
        a.image_size, sum(by_file.values())))
    for name, n in by_file.most_common():
        print('%6d  %s' % (n, name))
    if a.lines:
        print('-- the %d busiest lines' % a.lines)
        for where, n in counter.by_line.most_common(a.lines):
            print('%6d  %s' % (n, where))


def _print_layouts(a, changes):
    rows = sorted(changes.by_line.items(), key=lambda kv: -kv[1][1])
    print('%s %s%s%s, %d image(s) of %s: %d operators change a map\'s layout, %.1f MB' % (
        a.model, 'inference' if a.infer else 'training step', ' (bf16 autocast)' if a.amp else '',
        ' channels-last' if a.channels_last else '', 1 if a.infer else a.batch, a.image_size,
        sum(r[0] for _, r in rows), sum(r[1] for _, r in rows)))
    for where, (n, mb, kinds) in rows:
        print('%5d  %8.2f MB  %s  [%s]' % (n, mb, where, ', '.join(sorted(kinds))))
    return rows


if __name__ == '__main__':
    main()
