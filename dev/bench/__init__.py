"""The benchmark harness's shared code, imported by ``dev/benchmark.py``, ``dev/benchmark_ab.py``,
``dev/benchmark_loader.py`` and ``dev/count_ops.py`` (put ``dev/`` on ``sys.path``, then
``import bench.<module>``):

    data       synthetic COCO-like images and annotations (``make_synthetic_coco``)
    models     the benchmark models: ours configured as ``tools/train_net_step.py --bs B``
               configures it, torchvision's peer and its inputs made from our blob
    options    the command line of ``dev/benchmark.py`` (also how the other tools configure a run)
    timing     step timers, training steps, the inference runner, the measurements
    loader     the training data loader's throughput
    profilers  torch.profiler tables, host time by stage, host-device synchronisations
    report     the printed tables, the machine description, the JSON results file

Importing this package puts the pydetectron package on ``sys.path``: the copy in
``$PYDETECTRON_LIB`` when that is set (``dev/benchmark_ab.py`` times several copies that way),
else this checkout's ``lib/``.
"""
import os
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
LIB = os.environ.get('PYDETECTRON_LIB') or os.path.join(ROOT, 'lib')
if LIB not in sys.path:
    sys.path.insert(0, LIB)
