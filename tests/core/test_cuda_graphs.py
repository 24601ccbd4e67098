"""core.cuda_graphs: the conv body replayed as CUDA graphs during test_net -- off where it must
be (CPU models, training, compiled bodies, several batches in flight, augmentation), and on a
GPU the same features as the eager forward (test_net's detections with and without them:
tests/core/test_test_engine.py)."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pydetectron.core import cuda_graphs, test_engine
from pydetectron.core.config import cfg, reset_cfg


class Body(nn.Module):
    """A small FPN-like body: a list of two maps, one from an in-place ReLU and a residual."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        y = torch.relu_(self.a(x))
        z = self.b(y)
        return [y + 1, z + torch.nn.functional.max_pool2d(y, 2)]


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv_Body = Body()


def test_off_for_a_cpu_model_and_the_forward_is_left_as_it_was():
    model = Model().eval()
    forward = model.Conv_Body.forward
    with cuda_graphs.conv_body_graphs(model) as graphed:
        assert graphed is None
        assert model.Conv_Body.forward == forward
    assert 'forward' not in model.Conv_Body.__dict__
    assert not cuda_graphs.can_graph(Model().train())


def test_when_test_net_uses_them():
    reset_cfg()
    try:
        use = test_engine._use_cuda_graphs
        assert use(None, 1) and use(SimpleNamespace(cuda_graphs=True), 1)
        assert not use(SimpleNamespace(cuda_graphs=False), 1)      # --no-cuda_graphs
        assert not use(None, 2)                                    # two batches in flight
        for aug in (cfg.TEST.BBOX_AUG, cfg.TEST.MASK_AUG, cfg.TEST.KPS_AUG):
            aug.ENABLED = True
            assert not use(None, 1)
            aug.ENABLED = False
    finally:
        reset_cfg()


def test_test_net_children_get_no_cuda_graphs(tmp_path, monkeypatch):
    from pydetectron.engine import inference
    commands = []

    class Stop(Exception):
        pass

    def popen(cmd, **kwargs):
        commands.append(cmd)
        raise Stop()
    monkeypatch.setattr(inference.subprocess, 'Popen', popen)
    script = tmp_path / 'test_net.py'
    script.write_text('')
    for flag, expected in ((False, True), (True, False), (None, False)):
        args = SimpleNamespace(test_net_file=str(script), cuda=False, nproc=2, cuda_graphs=flag)
        with pytest.raises(Stop):
            inference.process_in_parallel('detection', 4, args, str(tmp_path), {})
        assert ('--no-cuda_graphs' in commands[-1]) is expected


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')


@pytest.mark.cuda
@cuda
def test_graphs_equal_the_eager_body_and_keep_the_newest():
    torch.manual_seed(0)
    model = Model().cuda().eval()
    xs = [torch.randn(1, 3, 32, 48, device='cuda'), torch.randn(1, 3, 64, 32, device='cuda'),
          torch.randn(1, 3, 40, 40, device='cuda')]
    with torch.no_grad():
        expected = [[t.clone() for t in model.Conv_Body(x)] for x in xs]
        with cuda_graphs.conv_body_graphs(model, max_graphs=2) as graphed:
            assert graphed is not None
            # shape 0: eager, captured, replayed; 1: eager, captured; 2: eager, captured (the
            # third graph: shape 0's goes); 0: captured again (shape 1's goes); 2: replayed
            for step, k in enumerate([0, 0, 0, 1, 1, 2, 2, 0, 2]):
                got = model.Conv_Body(xs[k].clone())
                assert all(torch.equal(a, b) for a, b in zip(got, expected[k])), step
            assert (graphed.captures, graphed.replays) == (4, 6)   # a capture replays at once
            assert [key[0] for key in graphed.graphs] == [tuple(xs[0].shape),
                                                          tuple(xs[2].shape)]
        assert 'forward' not in model.Conv_Body.__dict__
    assert model.Conv_Body(xs[0])[0].requires_grad       # autograd on: never a graph
