"""Runs ``tools/train_net_step.py`` unchanged, printing after each finished step a line
``step <step> <loss>`` (the exact float the trainer recorded) so tests can compare runs step by
step; ``--driver_sleep S`` pauses S seconds after each step so a signal can land mid-run.

    python tests/reliability/_train_driver.py [--driver_sleep 0.5] <train_net_step.py args>
"""
import os
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'lib'))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import train_net_step  # noqa: E402
from pydetectron.engine import trainer as trainer_mod  # noqa: E402


def main(argv):
    sleep = 0.0
    if argv[:1] == ['--driver_sleep']:
        sleep, argv = float(argv[1]), argv[2:]
    run_step = trainer_mod.Trainer._run_step

    def reporting_run_step(self, step):
        finished = run_step(self, step)
        if finished:
            print('step %d %r' % (step, self.loss_history[-1]), flush=True)
            time.sleep(sleep)
        return finished

    trainer_mod.Trainer._run_step = reporting_run_step
    return train_net_step.main(argv)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
