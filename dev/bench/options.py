"""The command line of ``dev/benchmark.py``. The other tools of ``dev/`` configure their runs
through it too (``parse_args([...])`` gives the namespace that ``bench.models.configure`` and the
timers read)."""
import argparse

from bench.models import MODELS

PRECISIONS = ('fp32', 'bf16')
DESCRIPTION = ('Time training and inference of the R-50-FPN detectors on synthetic COCO-like '
               "images, beside torchvision's models on the same images.")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument('--models', default='mask',
                   help='comma-separated among %s (default: mask)' % ', '.join(MODELS))
    p.add_argument('--amp', action='store_true',
                   help='bfloat16 autocast only (default: float32 and bfloat16)')
    p.add_argument('--fp32', action='store_true', help='float32 (TF32) only')
    p.add_argument('--batch_sizes',
                   help='training batch sizes to time, comma-separated (default: 2, then the '
                   'largest power of two that fits, up to --max_batch)')
    p.add_argument('--max_batch', type=int, default=64, help='upper end of the batch search')
    p.add_argument('--image_size', default='800x1333', help='HEIGHTxWIDTH of the images')
    p.add_argument('--objects', type=int, default=8, help='objects per image')
    p.add_argument('--iters', type=int, default=30, help='timed steps per measurement')
    p.add_argument('--warmup', type=int, default=5, help='untimed steps first')
    p.add_argument('--max_seconds', type=float, default=30.,
                   help='stop timing a measurement after this long (at least 3 steps)')
    p.add_argument('--infer_batch', type=int, default=8, help='the batched inference size')
    p.add_argument('--loader_workers', default='1,4',
                   help='data loader worker counts to time, comma-separated ("" skips)')
    p.add_argument('--loader_iters', type=int, default=60, help='timed loader batches')
    p.add_argument('--parts', default='train,infer,loader',
                   help='what to time, comma-separated among train, infer, loader')
    p.add_argument('--no-peer', dest='peer', action='store_false',
                   help='do not time torchvision')
    p.add_argument('--device', help='cuda or cpu (default: cuda when available)')
    p.add_argument('--set', dest='set_cfgs', nargs='+', default=[],
                   help='config KEY VALUE pairs applied to every model (after the YAML)')
    p.add_argument('--profile', action='store_true',
                   help='after timing the first model: the top operators of 3 of its training '
                   'steps at batch 2 (torch.profiler) and the host-device syncs of one step; '
                   'with --parts infer, for every model: device against wall time per image at '
                   'batch 1, the top operators and the syncs of one image')
    p.add_argument('--channels_last', action='store_true',
                   help='our model in channels-last memory format (torchvision stays NCHW)')
    p.add_argument('--compile', nargs='?', const='default', default=None, metavar='MODE',
                   help='torch.compile our conv body (backbone + FPN) in this mode (default, '
                   'reduce-overhead, max-autotune, ...); compilation happens in the warm-up')
    p.add_argument('--json', help='write every number to this file')
    p.add_argument('--keep_data', help='write the synthetic dataset here and keep it')
    args = p.parse_args(argv)
    unknown = [m for m in args.models.split(',') if m not in MODELS]
    if unknown or not args.models:
        p.error('--models: unknown %s; choose among %s' % (unknown, ', '.join(MODELS)))
    try:
        h, w = (int(x) for x in args.image_size.lower().split('x'))
    except ValueError:
        p.error('--image_size: expected HEIGHTxWIDTH like 800x1333, got %r' % args.image_size)
    args.height, args.width = h, w
    if args.amp and args.fp32:
        p.error('--amp and --fp32 exclude each other')
    args.precisions = ('bf16',) if args.amp else ('fp32',) if args.fp32 else PRECISIONS
    if args.batch_sizes:
        try:
            args.batch_sizes = [int(b) for b in args.batch_sizes.split(',') if b]
        except ValueError:
            p.error('--batch_sizes: expected comma-separated integers, got %r' % args.batch_sizes)
        if not args.batch_sizes or min(args.batch_sizes) < 1:
            p.error('--batch_sizes: expected positive integers')
    args.parts = set(x for x in args.parts.split(',') if x)
    if not args.parts <= {'train', 'infer', 'loader'}:
        p.error('--parts: unknown %s' % sorted(args.parts - {'train', 'infer', 'loader'}))
    if len(args.set_cfgs) % 2:
        p.error('--set takes KEY VALUE pairs; got an odd number of items')
    args.loader_workers = [int(x) for x in args.loader_workers.split(',') if x.strip()]
    return args
