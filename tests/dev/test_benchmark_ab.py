"""dev/benchmark_ab.py on the CPU: argument checks, and a tiny paired run of two copies of the
package, each worker importing the copy it was given."""
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'dev'))

import benchmark_ab  # noqa: E402

LIB = os.path.join(ROOT, 'lib')
TINY = ['--device', 'cpu', '--image_size', '64x96', '--objects', '2', '--warmup', '1',
        '--set', 'TEST.RPN_PRE_NMS_TOP_N', '50', 'TEST.RPN_POST_NMS_TOP_N', '20',
        'TEST.DETECTIONS_PER_IM', '5']


def test_parse_args_errors(tmp_path, capsys):
    for argv, message in ((['--impl', 'a=' + LIB], 'at least two'),
                          (['--impl', 'a' + LIB, '--peer'], 'NAME=LIBDIR'),
                          (['--impl', 'a=' + str(tmp_path), '--peer'], 'no pydetectron package'),
                          (['--impl', 'a=' + LIB, '--impl', 'a=' + LIB], 'must differ'),
                          (['--impl', 'torchvision=' + LIB, '--peer'], 'taken by --peer'),
                          (['--impl', 'a=' + LIB, '--peer', '--options', 'b=--channels_last'],
                           'one of the --impl names')):
        with pytest.raises(SystemExit):
            benchmark_ab.parse_args(argv)
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_paired_run_times_each_copy_in_turn(tmp_path, capsys):
    # a second copy of the package: the worker of "copy" must import it, not this checkout
    copy = tmp_path / 'lib'
    shutil.copytree(os.path.join(LIB, 'pydetectron'), copy / 'pydetectron',
                    ignore=shutil.ignore_patterns('__pycache__'))
    times = benchmark_ab.main(['--impl', 'here=' + LIB, '--impl', 'copy=' + str(copy),
                               '--options', 'copy=--channels_last',
                               '--model', 'faster', '--part', 'infer', '--steps', '3'] + TINY)
    assert list(times) == ['here', 'copy']
    assert all(len(t) == 3 and min(t) > 0 for t in times.values())
    out = capsys.readouterr().out
    assert 'worker here ready (pydetectron from %s)' % LIB in out
    assert 'worker copy ready (pydetectron from %s; --channels_last)' % copy in out
    assert 'per-round speed vs here' in out
    row = [line for line in out.splitlines() if line.startswith('here ')][0]
    assert row.split()[-3] == '1.000x'   # the reference against itself


def test_report_gives_paired_ratios(capsys):
    import types
    args = types.SimpleNamespace(part='train', batch=2, model='mask', precision='fp32', steps=3)
    # per round, "new" takes half the time of "old"; torchvision twice old's
    benchmark_ab.report(args, {'old': [10., 20., 40.], 'new': [5., 10., 20.],
                               'torchvision': [20., 40., 80.]})
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows['old'][1] == '20.0' and rows['old'][4] == '100.0'   # median ms, images/s
    assert rows['new'][5] == '2.000x' and rows['new'][8] == '4.000x'
    assert rows['torchvision'][5] == '0.500x' and rows['torchvision'][8] == '1.000x'
