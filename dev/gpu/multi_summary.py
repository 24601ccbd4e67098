"""The summary of the multi-GPU check (dev/gpu/multi.sh): the losses of the DataParallel and the
DistributedDataParallel runs step by step, and whether test_net in one process and with
--multi-gpu-testing gave the same detections.

    python dev/gpu/multi_summary.py OUT WORK
"""
import re
import sys

import numpy as np

from pydetectron.utils.io import load_pickle_safe


def losses(path):
    with open(path) as f:
        text = f.read()
    steps = [int(s) for s in re.findall(r'\[Step (\d+) / \d+\]', text)]
    vals = [float(v) for v in re.findall(r'loss: ([-\d.naninf]+), lr', text)]
    times = [float(v) for v in re.findall(r'time: ([\d.]+)', text)]
    return steps, vals, times


def main(out, work):
    for name in ('dp', 'ddp'):
        s, v, t = losses('%s/train_%s.log' % (out, name))
        print('%-4s steps %s' % (name, ' '.join('%d:%.4f' % p for p in zip(s, v))))
        print('%-4s mean s/step (as printed) %s' % (name, '%.3f' % t[-1] if t else '-'))
    try:
        a, b = (load_pickle_safe('%s/%s/detections.pkl' % (work, d)) for d in ('test1', 'testN'))
        same, total = 0, 0
        for ca, cb in zip(a['all_boxes'], b['all_boxes']):
            for x, y in zip(ca, cb):
                total += 1
                same += (np.shape(x) == np.shape(y) and np.allclose(x, y, atol=1e-3))
        print('test_net one process vs --multi-gpu-testing: %d of %d (class, image) box lists '
              'equal' % (same, total))
    except Exception as e:  # noqa: BLE001 -- a summary line, not a crash
        print('detections comparison failed: %s: %s' % (type(e).__name__, e))


if __name__ == '__main__':
    main(*sys.argv[1:3])
