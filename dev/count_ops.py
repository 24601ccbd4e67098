"""Count the ATen operators of one training step (or one inference) of a benchmark model, by the
pydetectron source file (and line) that issued them -- the host-side work of a step, which is
what limits small-batch training on a fast GPU. Runs on the CPU; operator counts do not depend
on the device.

    python dev/count_ops.py                        # Mask R-CNN training step, by file
    python dev/count_ops.py --infer --lines 30     # one inference, the 30 busiest lines
    python dev/count_ops.py --fixed-targets        # the step's targets as a GPU makes them

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


class CountOps(TorchDispatchMode):
    """Counts every operator by the innermost pydetectron frame that called it."""

    def __init__(self):
        super().__init__()
        self.by_line = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        where = 'backward / optimizer'
        for frame in reversed(traceback.extract_stack(limit=60)):
            if '%spydetectron%s' % (os.sep, os.sep) in frame.filename:
                where = '%s:%d' % (os.path.relpath(frame.filename, ROOT), frame.lineno)
                break
        self.by_line[where] += 1
        return func(*args, **(kwargs or {}))


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
    a = p.parse_args(argv)
    args = options.parse_args(['--device', 'cpu', '--no-peer', '--image_size', a.image_size])
    args.device = torch.device('cpu')
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_synthetic_coco(tmp, 2 * a.batch, args.height, args.width, args.objects,
                                   a.model == 'keypoint')
        names = models.configure(a.model, spec, a.batch, args)
        data, im_info, gt = models.load_batch(names, a.batch, args.device)
        model = models.build_ours(args.device)
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


if __name__ == '__main__':
    main()
