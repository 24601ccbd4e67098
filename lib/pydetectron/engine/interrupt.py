"""SIGINT / SIGTERM during training: finish or abandon the current step, then stop cleanly.

``GracefulInterrupt`` replaces the two handlers while training runs. The first signal only sets
``requested`` (and remembers which signal); the training loop looks at it between forward /
backward passes and after each optimizer step, so it never stops in the middle of an update:
it abandons a step whose optimizer update has not started, or saves the step that just finished.
A second signal means "now": the previous behaviour (KeyboardInterrupt for SIGINT, the default
termination for SIGTERM) takes over immediately. Checkpoint writes are atomic, so even that
cannot leave a damaged checkpoint.
"""
import logging
import signal
import threading

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal. ``exit_code`` follows the shell convention 128 + signum."""

    def __init__(self, signum, step, checkpoint=None):
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        if checkpoint:
            where = 'saved the last finished step {} to {}'.format(step, checkpoint)
        elif step is None or step < 0:
            where = 'no step had finished; nothing saved'
        else:
            where = 'last finished step {} (not saved: saving is off)'.format(step)
        super().__init__('Training interrupted by {}: {}'.format(name, where))

    @property
    def exit_code(self):
        return 128 + int(self.signum)


class GracefulInterrupt:
    """Context manager: deferred handling of SIGINT / SIGTERM (see the module docstring)."""

    def __init__(self, signals=SIGNALS):
        self.signals = tuple(signals)
        self.requested = False
        self.signum = None
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested:
            # Second signal: give the previous behaviour back and re-deliver.
            self._restore()
            logger.warning('Second %s: stopping now', signal.Signals(signum).name)
            signal.raise_signal(signum)
            return
        self.requested = True
        self.signum = signum
        logger.warning('%s received: stopping after the current step (send it again to stop '
                       'at once)', signal.Signals(signum).name)

    def request(self, signum=signal.SIGTERM):
        """Ask for a stop as if ``signum`` had arrived (used by tests and by callers)."""
        self.requested = True
        self.signum = signum

    def __enter__(self):
        # Signal handlers can only be installed from the main thread; elsewhere (a training run
        # driven from a worker thread) the flag still works through request().
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def _restore(self):
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()
        return False
