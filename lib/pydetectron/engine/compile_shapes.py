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

Two of Inductor's choices (torch 2.13) turn a training graph's symbolic sizes back into numbers,
so that every new blob width compiles again (dev/count_recompiles.py on the CPU: 5 graphs for 5
blob shapes). ``compile_options`` steers clear of both, for the dynamic modes only:

* Layout optimisation. On a CPU (and XPU) Inductor runs every convolution channels-last even
  with dynamic shapes (on CUDA it turns itself off for them), so the activations saved for the
  backward differ in strides from eager's; AOTAutograd then gives the backward's inputs those
  strides as plain numbers (``_aot_stage2b_bw_compile``: "real_stride can't be symbolic"), and
  each use of such a tensor guards that the width is the first blob's (the recompile reason was
  a channels-last contiguity check of C5). ``layout_optimization`` is off in the compile options
  (a no-op on CUDA, whose dynamic graphs never had it).
* The lowering of ``aten.convolution_backward`` fixes the strides of every ``grad_input`` to
  numbers (``guard_int_seq(layout_dx.stride)``, for the stride order of its Triton templates),
  before it knows that no Triton template applies and falls back to ATen's kernel -- on a CPU
  always, on CUDA unless max-autotune's conv backward backends include TRITON (ROCm's default).
  ``keep_convolution_backward_dynamic`` sends those cases to the fallback straight away.
"""
import logging

import torch

from pydetectron.engine.cli import non_negative_int
from pydetectron.utils import blob as blob_utils
from pydetectron.utils.errors import CliError

logger = logging.getLogger(__name__)

__all__ = ['COMPILE_MODES', 'CUDA_GRAPH_MODES', 'DEFAULT_SHAPE_BUCKETS',
           'add_shape_buckets_argument', 'set_shape_buckets', 'compile_options',
           'keep_convolution_backward_dynamic']

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
    the CUDA-graph modes (static bucket shapes; torch's own choice there). The dynamic modes
    spell the mode out as Inductor options (``torch.compile`` takes one or the other), with
    layout optimisation off, and install ``keep_convolution_backward_dynamic`` (see the module
    docstring: each keeps the blob's size symbolic through a training step)."""
    if mode in CUDA_GRAPH_MODES:
        return {'mode': mode}
    keep_convolution_backward_dynamic()
    options = dict(torch._inductor.list_mode_options(mode, dynamic=True))
    options['layout_optimization'] = False
    return {'dynamic': True, 'options': options}


def keep_convolution_backward_dynamic():
    """Lower ``aten.convolution_backward`` to ATen's kernel directly wherever Inductor's own
    lowering would end there anyway (no Triton template possible: a CPU tensor, max-autotune
    off, or no TRITON among the conv backward backends), skipping the lowering's guards on the
    ``grad_input`` strides, which specialise a dynamic size to the first one seen. The same
    kernel runs as before; the Triton templates keep the original lowering. Installed once;
    returns whether it is installed (False on a torch without that lowering)."""
    from torch._inductor import config, ir, lowering, utils
    try:
        from torch._inductor.kernel import conv   # registers the lowering this one wraps
    except ImportError:
        return False
    op = torch.ops.aten.convolution_backward.default
    original = lowering.lowerings.get(op)
    if getattr(original, '_keeps_sizes_dynamic', False):
        return True
    if (original is None or getattr(original, '_is_fallback_handler', False)
            or not hasattr(conv, 'convolution_backward_lowering')
            or not hasattr(utils, '_use_conv_bwd_input_autotune_backend')):
        return False
    # the fallback with the original's argument handling (registered in a private table);
    # Inductor's internals differ between torch releases: where these calls do not fit, the
    # original lowering stays (the recompilations come back, nothing breaks)
    try:
        fallback = lowering._register_lowering(
            op, lowering.fallback_handler(op, add_to_fallback_set=False), broadcast=False,
            type_promotion_kind=lowering.ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT,
            convert_input_to_bool=False, lowering_dict={})
    except (TypeError, AttributeError) as e:
        logger.debug('convolution_backward keeps Inductor\'s lowering: %s', e)
        return False

    def convolution_backward(grad_out, input, *args, **kwargs):
        triton = ((config.max_autotune or config.max_autotune_gemm)
                  and ir.get_device_type(input) != 'cpu'
                  and (utils._use_conv_bwd_input_autotune_backend('TRITON')
                       or utils._use_conv_bwd_weight_autotune_backend('TRITON')))
        return (original if triton else fallback)(grad_out, input, *args, **kwargs)

    convolution_backward._keeps_sizes_dynamic = True
    lowering.lowerings[op] = convolution_backward
    return True
