"""The tools' speed options: ``--channels_last`` and ``--compile [MODE]``.

``add_speed_arguments`` adds the flags to the test tools' parsers (test_net, infer_simple;
train_net_step words their help for training, and its ``--channels_last`` is on by default with
``--amp`` on a GPU: ``training_channels_last``); ``apply_speed_options`` applies them to a built
model, for every tool and for the benchmarks in ``dev/`` alike, so that what is timed is what the
tools run.
"""
import argparse

import torch

from pydetectron.engine.compile_shapes import add_shape_buckets_argument, compile_options


def add_speed_arguments(parser, training=False):
    """The tools' ``--channels_last``, ``--compile [MODE]`` and ``--shape_buckets N`` (see
    apply_speed_options and engine.compile_shapes); ``training`` words the help for
    train_net_step."""
    if training:
        parser.add_argument('--channels_last', action=argparse.BooleanOptionalAction,
                            default=None,
                            help='channels-last (NHWC) convolutions; default: on with --amp on a '
                            'GPU (bf16 steps there measured 1.6x slower in NCHW than in NHWC), '
                            'off otherwise')
    else:
        parser.add_argument('--channels_last', action='store_true',
                            help='channels-last (NHWC) convolutions: faster on GPUs, in bf16 above '
                            'all')
    parser.add_argument('--compile', nargs='?', const='default', default=None, metavar='MODE',
                        help='torch.compile the backbone + FPN in place (parameter names and '
                        'checkpoints are unchanged). MODE: default or max-autotune-no-cudagraphs '
                        '(dynamic image sizes: one graph for every size), reduce-overhead or '
                        'max-autotune (CUDA graphs: the blobs are padded to --shape_buckets '
                        'sizes, one graph each). ' + (
                            'One GPU per process (torchrun for several)' if training else
                            'The first images pay the compilation'))
    add_shape_buckets_argument(parser)


def training_channels_last(channels_last, amp, device):
    """train_net_step's memory format: ``--channels_last`` / ``--no-channels_last`` as given;
    unset (None), channels-last exactly when training in bf16 autocast (``--amp``) on a CUDA
    device: there bf16 steps were 1.6x slower in NCHW than in NHWC, and slower than fp32, at 2
    images a GPU on real photos (BENCHMARK.md, "--amp and the memory format")."""
    if channels_last is not None:
        return bool(channels_last)
    return bool(amp) and torch.device(device).type == 'cuda'


def apply_speed_options(model, channels_last=False, compile_mode=None):
    """The tools' ``--channels_last`` (NHWC convolutions, cuDNN's fast layout for TF32 and
    bf16) and ``--compile [MODE]`` (torch.compile of the conv body -- backbone and FPN -- in
    place, so parameter names do not change; the first images pay the compilation: with
    dynamic image sizes in 'default' and 'max-autotune-no-cudagraphs' modes, and in the CUDA-graph
    modes one graph per input size, the blobs padded to SHAPE_BUCKETS sizes:
    ``engine.compile_shapes``)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile_mode:
        model.Conv_Body.compile(**compile_options(compile_mode))
    return model
