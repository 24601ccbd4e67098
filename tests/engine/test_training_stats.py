"""TrainingStats: median smoothing, iter_size means, FPN RPN sums, the seed's console block,
TensorBoard scalars; and the Timer / SmoothedValue helpers."""
import pytest

from pydetectron.engine.training_stats import TrainingStats
from pydetectron.utils.logging import SmoothedValue, format_stats
from pydetectron.utils.timer import Timer


def test_smoothed_value_median_over_window():
    v = SmoothedValue(3)
    for x in [10, 1, 2, 3]:
        v.AddValue(x)
    assert v.GetMedianValue() == 2.0          # window [1, 2, 3]
    assert v.GetAverageValue() == 2.0
    assert v.GetGlobalAverageValue() == 4.0   # all four
    assert not hasattr(v, 'series')           # no unbounded history


def test_iter_size_means_and_fpn_sums():
    s = TrainingStats('r', 'c.yaml', 100, iter_size=2)
    s.UpdateIterStats({'loss_cls': 1.0, 'loss_rpn_cls_fpn2': 0.5, 'loss_rpn_cls_fpn3': 0.25,
                       'loss_rpn_bbox_fpn2': 0.125}, {'accuracy_cls': 0.5}, inner_iter=0)
    assert s.smoothed_total_loss.count == 0   # waits for the step's last pass
    s.UpdateIterStats({'loss_cls': 3.0, 'loss_rpn_cls_fpn2': 1.5, 'loss_rpn_cls_fpn3': 0.75,
                       'loss_rpn_bbox_fpn2': 0.375}, {'accuracy_cls': 1.0}, inner_iter=1)
    stats = s.GetStats(0, 0.02)
    assert stats['head_losses'] == {'loss_cls': 2.0}
    assert stats['rpn_losses'] == {'loss_rpn_bbox': 0.25, 'loss_rpn_cls': 1.5}   # level sums
    assert stats['rpn_fpn_cls_losses'] == {'loss_rpn_cls_fpn2': 1.0, 'loss_rpn_cls_fpn3': 0.5}
    assert stats['rpn_fpn_bbox_losses'] == {'loss_rpn_bbox_fpn2': 0.25}
    assert stats['metrics'] == {'accuracy_cls': 0.75}
    assert stats['loss'] == pytest.approx(2.0 + 1.0 + 0.5 + 0.25)
    assert stats['iter'] == 1


def test_console_block_in_seed_format():
    stats = {'iter': 20, 'time': 0.5, 'eta': '0:00:40', 'loss': 1.5, 'lr': 0.02,
             'metrics': {'accuracy_cls': 0.9}, 'head_losses': {'loss_bbox': 0.1, 'loss_cls': 0.2},
             'rpn_losses': {'loss_rpn_bbox': 0.05, 'loss_rpn_cls': 0.06},
             'rpn_fpn_cls_losses': {}, 'rpn_fpn_bbox_losses': {}}
    assert format_stats(stats, 'Mar01-10-00-00_host_step', 'e2e.yaml', 100) == (
        '[Mar01-10-00-00_host_step][e2e.yaml][Step 20 / 100]\n'
        '\t\tloss: 1.500000, lr: 0.020000 time: 0.500000, eta: 0:00:40\n'
        '\t\taccuracy_cls: 0.900000\n'
        '\t\tloss_bbox: 0.100000, loss_cls: 0.200000\n'
        '\t\tloss_rpn_bbox: 0.050000, loss_rpn_cls: 0.060000')


def test_log_period_last_step_and_tensorboard():
    class TB:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, k, v, it):
            self.scalars.append((k, it))
    tb, out = TB(), []
    s = TrainingStats('r', 'c.yaml', 7, log_period=3, tb_logger=tb, write=out.append)
    for it in range(7):
        s.IterTic()
        s.UpdateIterStats({'loss_cls': 1.0}, {'accuracy_cls': 1.0})
        s.IterToc()
        s.LogIterStats(it, 0.1)
    assert len(out) == 3                       # iterations 0, 3 and 6 (also the last)
    logged_iters = sorted({it for _, it in tb.scalars})
    assert logged_iters == [0, 3, 6]
    assert {k for k, _ in tb.scalars} == {'time', 'loss', 'lr', 'accuracy_cls', 'loss_cls'}


def test_timer_average():
    t = Timer()
    t.tic()
    t.toc()
    t.tic()
    d = t.toc(average=False)
    assert t.calls == 2 and d == t.diff and t.average_time == pytest.approx(t.total_time / 2)
