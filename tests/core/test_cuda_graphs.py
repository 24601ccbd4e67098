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
    model.test_front_possible = lambda: True
    with cuda_graphs.conv_body_graphs(model, front=True) as graphed:
        assert graphed is None and 'test_front' not in model.__dict__
    assert not cuda_graphs.can_graph_front(model)


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
        args = SimpleNamespace(test_net_file=str(script), cuda=False, nproc=2, cuda_graphs=flag,
                               front_graphs=not flag)
        with pytest.raises(Stop):
            inference.process_in_parallel('detection', 4, args, str(tmp_path), {})
        assert ('--no-cuda_graphs' in commands[-1]) is expected
        assert ('--front_graphs' in commands[-1]) is (not flag)


def test_graphs_by_shape_capture_at_the_second_input_keep_the_first_and_stop_on_a_failure(
        caplog):
    """The shared bookkeeping (CPU, a stand-in capture): eager the first time a key comes,
    captured the second while fewer than ``max_graphs`` are kept and ``_room`` allows; a key
    that comes when they are full runs eagerly and the kept ones stay (replacing them would
    capture again and again on a dataset of many shapes); a failed capture turns the graphs
    off with one warning naming the phase and shape."""

    class Graphs(cuda_graphs._GraphsByShape):
        room = 10
        fail = False

        def _room(self, x):
            return len(self.graphs) < self.room

        def _captured(self, key, x, phase):
            phase[0] = 'forward'
            if self.fail:
                raise RuntimeError('no capture')
            return 'entry %s' % (key,)

    x = torch.zeros(1)
    g = Graphs(None, None, max_graphs=2)

    def entry(k, graphs=g):         # keys as the graphs make them: the input's shape first
        return graphs._entry(((k, 3),), x)
    e1, e2 = 'entry ((1, 3),)', 'entry ((2, 3),)'
    assert [entry(k) for k in (1, 1, 1, 2, 2, 3, 3, 3, 1, 2)] == [
        None, e1, e1, None, e2, None, None, None, e1, e2]
    assert [k[0][0] for k in g.graphs] == [1, 2] and g.captures == 2   # max_graphs: 3 eager
    g = Graphs(None, None, max_graphs=4)
    g.room = 1
    assert [entry(k, g) for k in (4, 4, 5, 5, 4)] == [None, 'entry ((4, 3),)', None, None,
                                                       'entry ((4, 3),)']
    assert [k[0][0] for k in g.graphs] == [4] and g.captures == 1      # _room: 5 eager
    g.room, g.fail = 10, True
    with caplog.at_level('WARNING'):
        assert entry(5, g) is None
    assert g.failed and not g.graphs and g.captures == 1
    assert 'capturing the forward of a 5x3 input failed (RuntimeError: no capture)' in caplog.text


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')


@pytest.mark.cuda
@cuda
def test_graphs_equal_the_eager_body_and_keep_the_first():
    torch.manual_seed(0)
    model = Model().cuda().eval()
    xs = [torch.randn(1, 3, 32, 48, device='cuda'), torch.randn(1, 3, 64, 32, device='cuda'),
          torch.randn(1, 3, 40, 40, device='cuda')]
    with torch.no_grad():
        expected = [[t.clone() for t in model.Conv_Body(x)] for x in xs]
        with cuda_graphs.conv_body_graphs(model, max_graphs=2) as graphed:
            assert graphed is not None
            # shape 0: eager, captured, replayed; 1: eager, captured; 2: eager twice (two
            # graphs kept already); 0: replayed
            for step, k in enumerate([0, 0, 0, 1, 1, 2, 2, 0, 2]):
                got = model.Conv_Body(xs[k].clone())
                assert all(torch.equal(a, b) for a, b in zip(got, expected[k])), step
            assert (graphed.captures, graphed.replays) == (2, 4)   # a capture replays at once
            assert [key[0] for key in graphed.graphs] == [tuple(xs[0].shape),
                                                          tuple(xs[1].shape)]
        assert 'forward' not in model.Conv_Body.__dict__
    assert model.Conv_Body(xs[0])[0].requires_grad       # autograd on: never a graph


@pytest.mark.cuda
@cuda
def test_a_front_of_two_inputs_is_graphed_by_both_and_runs_the_body_eagerly_inside():
    """A graphed function of two tensors (test_front's blob and im_info): keyed by both
    layouts, both copied in at each replay; while it warms up and captures, the body's own
    graphs (routed by conv_body_graphs) run eagerly: its work goes into the outer graph."""
    torch.manual_seed(0)
    model = Model().cuda().eval()
    body = model.Conv_Body

    def front(x, scale):
        return [t * scale for t in model.Conv_Body(x)]
    x = torch.randn(1, 3, 32, 48, device='cuda')
    scales = [torch.tensor([2.], device='cuda'), torch.tensor([3.], device='cuda'),
              torch.tensor([5.], device='cuda'), torch.tensor([[7.]], device='cuda')]
    with torch.no_grad(), cuda_graphs.conv_body_graphs(model) as body_graphs:
        graphed = cuda_graphs.GraphedForward(model, front)
        # eager, captured, replayed, eager (another layout of the second input)
        for s in scales:
            got = graphed(x.clone(), s)
            want = [t * s for t in Body.forward(body, x)]
            assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert (graphed.captures, graphed.replays) == (1, 2) and not graphed.failed
        assert len(graphed.graphs) == 1 and list(graphed.graphs)[0][0] == tuple(x.shape)
        assert body_graphs.captures == 0


# -- training ----------------------------------------------------------------------------------

class TrainBody(nn.Module):
    """A body with a frozen first conv (FREEZE_AT), a trainable rest and two outputs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stem.requires_grad_(False)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)

    def forward(self, x):
        y = torch.relu_(self.a(torch.relu(self.stem(x))))
        return [y * 2, self.b(y) + torch.nn.functional.max_pool2d(y, 2)]


class TrainModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv_Body = TrainBody()


def test_training_graphs_off_where_they_must_be(monkeypatch):
    model = TrainModel().train()
    assert not cuda_graphs.can_graph_training(model)             # a CPU model
    with cuda_graphs.training_conv_body_graphs(model) as graphed:
        assert graphed is None and 'forward' not in model.Conv_Body.__dict__
    # on a GPU: not with a hook (a graph would skip it), a compiled body, nor when not enabled
    monkeypatch.setattr(cuda_graphs, '_body_can_graph', lambda m: True)
    assert cuda_graphs.can_graph_training(model)
    handle = model.Conv_Body.a.register_forward_hook(lambda *a: None)
    assert not cuda_graphs.can_graph_training(model)
    handle.remove()
    handle = model.Conv_Body.b.register_full_backward_hook(lambda *a: None)
    assert not cuda_graphs.can_graph_training(model)
    handle.remove()
    handle = model.Conv_Body.register_forward_hook(lambda *a: None)   # runs around the graphs
    assert cuda_graphs.can_graph_training(model)
    handle.remove()
    with cuda_graphs.training_conv_body_graphs(model, enabled=False) as graphed:
        assert graphed is None
    monkeypatch.undo()
    model.Conv_Body.compile()
    assert not cuda_graphs._body_can_graph(model)


def test_train_net_step_flag_is_on_by_default():
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'tools'))
    import train_net_step
    assert train_net_step.parse_args(['--cfg', 'x.yaml']).cuda_graphs is True
    assert train_net_step.parse_args(['--cfg', 'x.yaml', '--cuda_graphs']).cuda_graphs is True
    assert train_net_step.parse_args(['--cfg', 'x.yaml', '--no-cuda_graphs']).cuda_graphs is False


class _EagerReplay(object):
    """Stands in for a captured pair on the CPU: "replaying" the forward runs the body on the
    static input and writes the static outputs; the backward writes the static gradients from
    the static output gradients -- as the graphs do, in place."""

    def __init__(self, entry, body):
        self.entry, self.body, self.live = entry, body, None

    def forward_replay(self):
        with torch.enable_grad():
            self.live = self.body(self.entry.static_in)
        for static, o in zip(self.entry.outputs, self.live):
            static.copy_(o.detach())

    def backward_replay(self):
        grads = torch.autograd.grad(self.live, self.entry.params, self.entry.grad_outputs,
                                    allow_unused=True)
        for static, g in zip(self.entry.grads, grads):
            static.copy_(g)


def test_the_replayed_body_is_one_autograd_node_as_eager():
    """_ReplayBody's autograd plumbing (CPU, the graphs replaced by eager stand-ins): the
    parameters' gradients accumulate into .grad as eager ones do (a copy, not the static
    tensor), over two passes; an output left out of the loss gives its parameters no gradient
    (None: the optimizer skips them), as eager autograd does."""
    torch.manual_seed(0)
    body = TrainBody()
    params = [p for p in body.parameters() if p.requires_grad]
    x = torch.randn(2, 3, 8, 12)
    entry = cuda_graphs._Entry()
    entry.static_in, entry.params = torch.zeros_like(x), params
    with torch.no_grad():
        outs = body(x)
    entry.outputs = [torch.zeros_like(o) for o in outs]
    entry.grad_outputs = [torch.zeros_like(o) for o in outs]
    entry.grads = [torch.zeros_like(p) for p in params]
    entry.depends = cuda_graphs.TrainingGraphedForward._dependencies(body(x), params)
    assert entry.depends == [frozenset({0, 1}), frozenset({0, 1, 2})]
    fake = _EagerReplay(entry, body)
    entry.forward_graph = type('G', (), {'replay': staticmethod(fake.forward_replay)})()
    entry.backward_graph = type('G', (), {'replay': staticmethod(fake.backward_replay)})()
    w = [torch.randn_like(o) for o in outs]

    def two_passes(run, second_only_first_output):
        for p in params:
            p.grad = None
        for k in range(2):
            got = run(x * (k + 1))
            used = got[:1] if (k == 1 and second_only_first_output) else got
            sum((o * wi).sum() for o, wi in zip(used, w)).backward()
        return [None if p.grad is None else p.grad.clone() for p in params]

    replay = lambda inp: cuda_graphs._ReplayBody.apply(entry, inp, *params)  # noqa: E731
    for only_first in (False, True):
        want = two_passes(body, only_first)
        got = two_passes(replay, only_first)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert got[2].data_ptr() != entry.grads[2].data_ptr()     # copied out, not aliased
    for p in params:
        p.grad = None
    out = replay(x)
    (out[0] * w[0]).sum().backward()            # the second output left out: no gradient for b
    assert params[0].grad is not None and params[2].grad is None


def test_the_captured_passes_run_the_body_on_aliases_of_its_parameters():
    """Warm-ups and captures run the body with its trainable parameters replaced by new leaves
    on the same memory (fresh autograd nodes, made on the capture stream): the same outputs,
    and gradients for the aliases equal to the parameters' own; nothing accumulates into
    .grad."""
    torch.manual_seed(0)
    body = TrainBody().train()
    graphed = cuda_graphs.TrainingGraphedForward(body, body.forward)
    body.forward = graphed                  # routed, as in training
    named = [(n, p) for n, p in body.named_parameters() if p.requires_grad]
    aliases = {n: p.detach().requires_grad_() for n, p in named}
    assert [a.data_ptr() for a in aliases.values()] == [p.data_ptr() for _, p in named]
    x = torch.randn(2, 3, 8, 12)
    got = graphed._run(x, None, aliases)
    want = body(x)
    w = [torch.randn_like(o) for o in want]
    grads = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(got, w)),
                                list(aliases.values()))
    grads_want = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(want, w)),
                                     [p for _, p in named])
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_want))
    assert all(p.grad is None for p in body.parameters()) and not graphed.aliased


def _train_steps(model, xs, order, amp, weights):
    """SGD steps of ``model``'s body on ``xs[k]`` for k in ``order``: the loss weighs each output
    by a fixed random map (the second output left out every third step: no gradient reaches it
    there); returns each step's outputs and trainable parameters' gradients."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05,
                          momentum=0.9)
    record = []
    for step, k in enumerate(order):
        opt.zero_grad(set_to_none=True)
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=amp):
            outs = model.Conv_Body(xs[k].clone())
            used = outs if step % 3 else outs[:1]
            loss = sum((o.float() * w[k]).sum() for o, w in zip(used, weights))
        loss.backward()
        record.append(([o.detach().float().clone() for o in outs],
                       [None if p.grad is None else p.grad.clone()
                        for p in model.Conv_Body.parameters()]))
        opt.step()
    return record


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize('amp', [False, True])
def test_training_graphs_give_the_eager_outputs_gradients_and_updates(amp):
    import copy
    torch.backends.cudnn.deterministic = True
    torch.manual_seed(0)
    model = TrainModel().cuda().train()
    eager_model = copy.deepcopy(model)
    shapes = [(2, 3, 32, 48), (2, 3, 64, 32), (2, 3, 40, 40)]
    xs = [torch.randn(s, device='cuda') for s in shapes]
    weights = [[torch.randn(2, 8, s[2], s[3], device='cuda') for s in shapes],
               [torch.randn(2, 8, s[2] // 2, s[3] // 2, device='cuda') for s in shapes]]
    # shape 0: eager, captured, replayed x2; 1: eager, captured; 2: eager throughout (two pairs
    # kept already); 0 and 1: replayed. Step 3 replays without a gradient for the second output
    # (steps 6 and 9 leave it out eagerly).
    order = [0, 0, 0, 0, 1, 1, 2, 2, 0, 2, 0, 1]
    want = _train_steps(eager_model, xs, order, amp, weights)
    with cuda_graphs.training_conv_body_graphs(model, max_graphs=2) as graphed:
        assert graphed is not None
        got = _train_steps(model, xs, order, amp, weights)
        assert not graphed.failed
        assert (graphed.captures, graphed.replays) == (2, 7)
    assert 'forward' not in model.Conv_Body.__dict__
    for step, ((outs, grads), (outs_e, grads_e)) in enumerate(zip(got, want)):
        for a, b in zip(outs, outs_e):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg='step %d output' % step)
        assert grads[0] is None and grads_e[0] is None      # the frozen stem: no gradient
        # b's weight: no gradient (as eager) where the second output is left out
        assert [g is None for g in grads] == [True, True, False, False, step % 3 == 0]
        for a, b in zip(grads, grads_e):
            if a is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=0, msg='step %d grad' % step)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.cuda
@cuda
def test_training_graphs_keep_within_their_memory_share(monkeypatch):
    """A share of the GPU's memory smaller than one pair's tensors: the first pair is kept (a
    first capture always fits), the other shape trains eagerly, and the steps still equal the
    eager ones."""
    import copy
    torch.backends.cudnn.deterministic = True
    monkeypatch.setattr(cuda_graphs.TrainingGraphedForward, 'MEMORY_FRACTION', 1e-12)
    torch.manual_seed(1)
    model = TrainModel().cuda().train()
    eager_model = copy.deepcopy(model)
    shapes = [(2, 3, 32, 48), (2, 3, 64, 32)]
    xs = [torch.randn(s, device='cuda') for s in shapes]
    weights = [[torch.randn(2, 8, s[2], s[3], device='cuda') for s in shapes],
               [torch.randn(2, 8, s[2] // 2, s[3] // 2, device='cuda') for s in shapes]]
    order = [0, 0, 1, 1, 0, 0]
    want = _train_steps(eager_model, xs, order, False, weights)
    with cuda_graphs.training_conv_body_graphs(model) as graphed:
        got = _train_steps(model, xs, order, False, weights)
        assert (graphed.captures, graphed.replays, len(graphed.graphs)) == (1, 3, 1)
        assert graphed.entry_bytes > 0 and not graphed.failed
    for (outs, grads), (outs_e, grads_e) in zip(got, want):
        assert all(torch.equal(a, b) for a, b in zip(outs, outs_e))
        assert [g is None for g in grads] == [g is None for g in grads_e]
        assert all(torch.equal(a, b) for a, b in zip(grads, grads_e) if a is not None)
