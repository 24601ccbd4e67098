"""A simple wall-clock timer (Detectron's ``Timer``): ``tic`` / ``toc`` with a running average."""
import time


class Timer:
    """Accumulates the durations of ``tic()`` ... ``toc()`` intervals.

    ``average_time`` is the mean over every interval since the last ``reset()``; ``diff`` the last
    interval. On CUDA, call ``torch.cuda.synchronize()`` before ``toc()`` when the interval must
    include queued kernels (the training loop syncs anyway when it reads the losses).
    """

    def __init__(self):
        self.reset()

    def tic(self):
        # perf_counter, not time.time: monotonic and high resolution.
        self.start_time = time.perf_counter()

    def toc(self, average=True):
        self.diff = time.perf_counter() - self.start_time
        self.total_time += self.diff
        self.calls += 1
        self.average_time = self.total_time / self.calls
        return self.average_time if average else self.diff

    def reset(self):
        self.total_time = 0.
        self.calls = 0
        self.start_time = 0.
        self.diff = 0.
        self.average_time = 0.
