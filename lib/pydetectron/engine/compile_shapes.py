"""Input shapes for the tools' ``--compile [MODE]``: dynamic sizes, or a few bucket sizes.

Real datasets give blobs of many sizes (COCO at 800 / 1333: every image its own width). A body
compiled for one size compiles again for the next, so ``--compile`` would pay only on fixed-size
inputs. Two answers, by mode:

* ``default`` and ``max-autotune-no-cudagraphs``: the body is compiled with dynamic shapes
  (``torch.compile(dynamic=True)``): the blob's height and width are symbols, and one graph
  serves every size (a batch of 1 and a batch of 2 are two graphs: torch specialises sizes 0
  and 1). The blobs are Detectron's.
* ``reduce-overhead`` and ``max-autotune`` record CUDA graphs, which replay one static shape
  each: the blobs are padded further to a few bucket sizes (``SHAPE_BUCKETS``, see
  ``utils.blob.ShapeBuckets``; default ``DEFAULT_SHAPE_BUCKETS`` pixels), so a handful of graphs
  serve a whole dataset. That padding adds anchors, so RPN proposals may differ from
  Detectron's: it is on only in these modes or with ``--shape_buckets N``.

``add_shape_buckets_argument`` gives a tool the flag; ``set_shape_buckets(cfg, args)`` (a tool's
step after the config merge) sets ``cfg.SHAPE_BUCKETS``; ``compile_options(mode)`` are the
arguments of ``torch.compile``.
"""
import logging

from pydetectron.engine.cli import non_negative_int
from pydetectron.utils import blob as blob_utils
from pydetectron.utils.errors import CliError

logger = logging.getLogger(__name__)

__all__ = ['COMPILE_MODES', 'CUDA_GRAPH_MODES', 'DEFAULT_SHAPE_BUCKETS',
           'add_shape_buckets_argument', 'set_shape_buckets', 'compile_options']

COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
CUDA_GRAPH_MODES = ('reduce-overhead', 'max-autotune')

# 160 = 5 x 32: with the scale rule's sides (800 and 1344 at 800 / 1333) as extra sizes, 200
# training batches of 2 coco_mini train2017 photos at 800 / 1333 fall into 5 shapes (13 without
# buckets) for 3.7% more pixels than the stride-32 padding; 128: 7 shapes, +4.2%; 256: 5, +6.6%
# (README, "Image sizes under --compile"; dev/count_recompiles.py --shapes-only)
DEFAULT_SHAPE_BUCKETS = 160


def add_shape_buckets_argument(parser):
    parser.add_argument(
        '--shape_buckets', type=non_negative_int, default=None, metavar='N',
        help='pad every input blob further, up to the next multiple of N pixels or the next of '
        'the scales and MAX_SIZE (padded to FPN.COARSEST_STRIDE), so that its shapes repeat '
        '(SHAPE_BUCKETS; 0 = off, Detectron\'s blobs). Default: %d with a CUDA-graph --compile '
        'mode (reduce-overhead, max-autotune), else off. N must be a multiple of '
        'FPN.COARSEST_STRIDE' % DEFAULT_SHAPE_BUCKETS)


def set_shape_buckets(cfg, args):
    """``cfg.SHAPE_BUCKETS`` from ``--shape_buckets`` and ``--compile`` (``args`` may lack either):
    the flag when given; else ``DEFAULT_SHAPE_BUCKETS`` for a CUDA-graph mode unless the config
    (or ``--set``) chose a value; else the config's. Run after the config merge, before
    ``assert_and_infer_cfg``. A bad ``--compile`` mode or flag value is a one-line CliError."""
    mode = getattr(args, 'compile', None)
    if mode is not None and mode not in COMPILE_MODES:
        raise CliError('--compile %s: expected one of %s' % (mode, ', '.join(COMPILE_MODES)))
    value = getattr(args, 'shape_buckets', None)
    stride = blob_utils.coarsest_stride(cfg)
    if value is not None:
        if value % stride:
            raise CliError('--shape_buckets %d: expected 0 (off) or a multiple of '
                           'FPN.COARSEST_STRIDE (%d)' % (value, stride))
        cfg.SHAPE_BUCKETS = int(value)
    elif mode in CUDA_GRAPH_MODES and not cfg.SHAPE_BUCKETS:
        cfg.SHAPE_BUCKETS = stride * -(-DEFAULT_SHAPE_BUCKETS // stride)   # a multiple of it
    if mode in CUDA_GRAPH_MODES:
        if cfg.SHAPE_BUCKETS:
            logger.info('--compile %s: blobs padded to shape buckets of %d pixels '
                        '(SHAPE_BUCKETS): one CUDA graph per bucket shape', mode,
                        cfg.SHAPE_BUCKETS)
        else:
            logger.warning('--compile %s with SHAPE_BUCKETS 0: every new input size records '
                           'a CUDA graph', mode)
    return cfg.SHAPE_BUCKETS


def compile_options(mode):
    """``torch.compile`` keyword arguments of ``--compile MODE``: dynamic H and W, except in
    the CUDA-graph modes (static bucket shapes; torch's own choice there)."""
    options = {} if mode == 'default' else {'mode': mode}
    if mode not in CUDA_GRAPH_MODES:
        options['dynamic'] = True
    return options
