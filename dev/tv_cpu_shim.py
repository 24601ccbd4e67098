"""CPU REHEARSAL ONLY: lets a torchvision wheel built for another torch import on this machine.

Never used on the GPU machine, never used for a number: its kernels are slow stand-ins. It exists
so that the torchvision halves of ``dev/benchmark_train_net.py`` and ``dev/benchmark_test_net.py``
can be exercised end to end on a CPU-only development machine whose torch (2.13 here) does not
match the torchvision wheel's compiled ops (built for torch 2.11: loading ``torchvision/_C.so``
fails, and ``import torchvision`` then stops with "operator torchvision::nms does not exist").
The benchmarks load it only when the environment says ``PYDETECTRON_TV_SHIM=1``
(:func:`maybe_install`).

:func:`install` must run before the first ``import torchvision``. It

- defines the ``torchvision::*`` operator schemas that torchvision 0.26's Python code calls and
  registers fake/meta kernels for (``nms``, ``roi_align``, ``roi_pool``, ``ps_roi_align``,
  ``ps_roi_pool``, ``deform_conv2d``, their ``_*_backward`` ops, ``_cuda_version``);
- gives CPU kernels to ``nms`` and ``roi_align`` (+ ``_roi_align_backward`` and its autograd
  formula, for training), and float32 autocast kernels for both (as torchvision's own), built on
  pydetectron's compiled CPU ops. ``roi_align`` has the same schema and the same ``aligned`` /
  ``sampling_ratio`` semantics as pydetectron's; ``nms`` uses pydetectron's greedy NMS on boxes
  whose x2, y2 are shifted by -1, which turns torchvision's exclusive widths into Detectron's
  ``+1`` ones (ties at the threshold are suppressed here, kept by torchvision: irrelevant for a
  rehearsal). The other ops have schemas only; calling them raises;
- makes torchvision believe its ``_C`` loaded (``torch.ops.load_library`` skips that one file
  during the import), so that torchvision takes its compiled-op path exactly as on the GPU, and
  its own ``_meta_registrations`` run against the schemas above.
"""
import os
import sys

import torch

ENV = 'PYDETECTRON_TV_SHIM'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# torchvision 0.26's operator schemas (torchvision/csrc/ops/*.cpp), as its Python calls them
SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
    "float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
    "float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, "
    "SymInt channels, SymInt height, SymInt width) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
    "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, "
    "Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, "
    "SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups, "
    "bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "_cuda_version() -> int",
)
_NOT_IMPLEMENTED = ('roi_pool', '_roi_pool_backward', 'ps_roi_align', '_ps_roi_align_backward',
                    'ps_roi_pool', '_ps_roi_pool_backward', 'deform_conv2d',
                    '_deform_conv2d_backward')

_libs = []   # the torch.library.Library objects must outlive the registrations


def _pydetectron_ops():
    lib = os.path.join(ROOT, 'lib')
    if lib not in sys.path:
        sys.path.append(lib)      # a checkout's lib/ put first by the caller (--lib) wins
    from pydetectron.ops import _ext
    _ext.load()      # torch.ops.pydetectron.* (the compiled CPU kernels)


def _nms_cpu(dets, scores, iou_threshold):
    if dets.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=dets.device)
    boxes = dets.float().clone()
    boxes[:, 2:] -= 1.0        # exclusive (torchvision) -> inclusive +1 widths (Detectron)
    return torch.ops.pydetectron.nms(boxes.contiguous(), scores.float().contiguous(),
                                     float(iou_threshold))


def _roi_align_cpu(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                   aligned):
    return torch.ops.pydetectron.roi_align(input, rois, spatial_scale, pooled_height,
                                           pooled_width, sampling_ratio, aligned)


def _roi_align_backward_cpu(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size,
                            channels, height, width, sampling_ratio, aligned):
    return torch.ops.pydetectron._roi_align_backward(
        grad.contiguous(), rois, spatial_scale, pooled_height, pooled_width, batch_size,
        channels, height, width, sampling_ratio, aligned)


def _not_implemented(name):
    def kernel(*args, **kwargs):
        raise NotImplementedError('dev/tv_cpu_shim.py (CPU rehearsal) has no kernel for '
                                  'torchvision::%s' % name)
    return kernel


def _roi_align_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    ctx.input_shape = tuple(input.shape)


def _roi_align_backward_formula(ctx, grad):
    rois, = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.args
    n, c, h, w = ctx.input_shape
    grad_input = torch.ops.torchvision._roi_align_backward(
        grad, rois, spatial_scale, pooled_height, pooled_width, n, c, h, w, sampling_ratio,
        aligned)
    return grad_input, None, None, None, None, None, None


def _roi_align_autocast(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                        aligned):
    # torchvision's autocast kernel: float32 inside, the output back in the input's dtype
    with torch.autocast('cpu', enabled=False):
        out = torch.ops.torchvision.roi_align(input.float(), rois.float(), spatial_scale,
                                              pooled_height, pooled_width, sampling_ratio,
                                              aligned)
    return out.to(input.dtype)


def _nms_autocast(dets, scores, iou_threshold):
    with torch.autocast('cpu', enabled=False):
        return torch.ops.torchvision.nms(dets.float(), scores.float(), iou_threshold)


def _define_ops():
    if hasattr(torch.ops, 'torchvision') and hasattr(torch.ops.torchvision, 'nms'):
        return False   # torchvision's own ops (or this shim) are registered already
    _pydetectron_ops()
    lib = torch.library.Library('torchvision', 'DEF')
    _libs.append(lib)
    for schema in SCHEMAS:
        lib.define(schema)
    lib.impl('nms', _nms_cpu, 'CPU')
    lib.impl('roi_align', _roi_align_cpu, 'CPU')
    lib.impl('_roi_align_backward', _roi_align_backward_cpu, 'CPU')
    lib.impl('nms', _nms_autocast, 'AutocastCPU')
    lib.impl('roi_align', _roi_align_autocast, 'AutocastCPU')
    lib.impl('_cuda_version', lambda: -1, 'CompositeExplicitAutograd')
    for name in _NOT_IMPLEMENTED:
        lib.impl(name, _not_implemented(name), 'CPU')
    torch.library.register_autograd('torchvision::roi_align', _roi_align_backward_formula,
                                    setup_context=_roi_align_setup_context)
    return True


def install():
    """Register the stand-in ops, then import torchvision with its ``_C`` load skipped. Returns
    the torchvision module. Call before anything imports torchvision."""
    if 'torchvision' in sys.modules:
        if not hasattr(torch.ops.torchvision, 'nms'):
            raise RuntimeError('dev/tv_cpu_shim.py: torchvision was imported before the shim')
        return sys.modules['torchvision']
    _define_ops()
    real_load = torch.ops.load_library

    def load_library(path):
        parts = os.path.normpath(str(path)).split(os.sep)
        if len(parts) >= 2 and parts[-2] == 'torchvision' and parts[-1].startswith('_C.'):
            return None           # its ops are the ones defined above
        return real_load(path)

    torch.ops.load_library = load_library
    try:
        import torchvision
    finally:
        torch.ops.load_library = real_load
    if not torchvision.extension._has_ops():
        raise RuntimeError('dev/tv_cpu_shim.py: torchvision still reports no compiled ops')
    return torchvision


def maybe_install():
    """``install()`` when the environment sets PYDETECTRON_TV_SHIM=1 (CPU rehearsals only)."""
    if os.environ.get(ENV) == '1':
        install()
        sys.stderr.write('%s=1: torchvision runs on dev/tv_cpu_shim.py stand-in ops (CPU '
                         'rehearsal, no numbers)\n' % ENV)
        return True
    return False
