"""The tools' speed options: ``--channels_last`` and ``--compile [MODE]``.

``add_speed_arguments`` adds the flags to the test tools' parsers (test_net, infer_simple;
train_net_step words their help for training); ``apply_speed_options`` applies them to a built
model, for every tool and for the benchmarks in ``dev/`` alike, so that what is timed is what the
tools run.
"""
import torch


def add_speed_arguments(parser):
    """The test tools' ``--channels_last`` and ``--compile [MODE]`` (see apply_speed_options)."""
    parser.add_argument('--channels_last', action='store_true',
                        help='channels-last (NHWC) convolutions: faster on GPUs, in bf16 above all')
    parser.add_argument('--compile', nargs='?', const='default', default=None, metavar='MODE',
                        help='torch.compile the backbone + FPN (MODE: default, reduce-overhead '
                        'for CUDA graphs, max-autotune); the first images pay the compilation')


def apply_speed_options(model, channels_last=False, compile_mode=None):
    """The tools' ``--channels_last`` (NHWC convolutions, cuDNN's fast layout for TF32 and
    bf16) and ``--compile [MODE]`` (torch.compile of the conv body -- backbone and FPN -- in
    place, so parameter names do not change; the first images pay the compilation -- torch
    makes the sizes dynamic after the second one -- and in 'reduce-overhead' mode every new
    input size records a CUDA graph)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile_mode:
        model.Conv_Body.compile(**({} if compile_mode == 'default' else {'mode': compile_mode}))
    return model
