"""The conv body (backbone + FPN) of a CUDA model replayed as CUDA graphs during test_net.

At batch 1 the body's ~140 operators cost the host more time than the GPU needs to run them
(an H100 measured ~6 ms of host time against ~4 ms of kernels an image at 800 / 1333, under the
profiler: ``dev/profile_test_net.py``). A CUDA graph replays them all in one call. The kernels
are the same ones (captured, not compiled), so the features are equal bit for bit to the eager
forward's.

``conv_body_graphs(model)`` is a context manager that, while it is open, routes
``model.Conv_Body``'s forward through a ``GraphedForward``: one graph per input (shape, dtype,
strides), captured the second time that input shape comes (the first time runs eagerly, which
also warms the caches: folded weights, cuDNN's plans), at most ``max_graphs`` kept (the least
recently used goes). All graphs share one memory pool, so the outputs of a replay are valid only
until the next replay: the caller must be done with one image's features before it asks for the
next image's, which test_net's one batch in flight is (test-time augmentation, which keeps the
features of several scales, and several batches in flight do not get graphs). A shape that fails
to capture turns the graphs off for the rest of the context, with a warning: the eager forward
runs instead.
"""
from collections import OrderedDict
import contextlib
import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ['GraphedForward', 'conv_body_graphs', 'can_graph']

# Graphs kept: the blob shapes of COCO photos at 800 / 1333 (stride 32) -- coco_mini's val2017
# has 16, four of them covering 63 of its 79 photos -- each graph holding its features (~85 MB
# for an 800 x 1216 blob with FPN).
MAX_GRAPHS = 16


def _check_outputs(out):
    """A graph's outputs must be tensors (a tensor, or a list or tuple of them)."""
    if torch.is_tensor(out) or (isinstance(out, (list, tuple))
                                and all(torch.is_tensor(t) for t in out)):
        return
    raise TypeError('CUDA graphs: the conv body returned %s, not a tensor or a list of them'
                    % type(out).__name__)


class GraphedForward(object):
    """``forward(x)`` of ``module`` (inference) as one CUDA graph per input layout of ``x``."""

    def __init__(self, module, forward, max_graphs=MAX_GRAPHS):
        self.module, self.forward = module, forward
        self.max_graphs = max_graphs
        self.graphs = OrderedDict()     # key -> (static input, graph, static output)
        self.seen = set()
        self.pool = self.stream = None
        self.failed = False
        self.captures = self.replays = 0

    def __call__(self, x, *args, **kwargs):
        if (self.failed or args or kwargs or not torch.is_tensor(x) or not x.is_cuda
                or torch.is_grad_enabled() or self.module.training):
            return self.forward(x, *args, **kwargs)
        key = (tuple(x.shape), x.dtype, x.stride(), x.device)
        entry = self.graphs.get(key)
        if entry is None:
            if key not in self.seen:            # the first time: eager (and the warm-up)
                self.seen.add(key)
                return self.forward(x)
            entry = self._capture(key, x)
            if entry is None:
                return self.forward(x)
        else:
            self.graphs.move_to_end(key)
        static_in, graph, static_out = entry
        static_in.copy_(x)
        graph.replay()
        self.replays += 1
        return static_out

    def _capture(self, key, x):
        # (not torch.cuda.graph: it empties the caching allocators, the page-locked one too --
        # where test_net's reader threads keep their blobs -- at every capture)
        try:
            static_in = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
            static_in.copy_(x)
            current = torch.cuda.current_stream(x.device)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
                # one capture stream for all the shapes: the warm-ups' freed blocks stay cached
                # for that stream, to be used again by the next warm-up
                self.stream = torch.cuda.Stream(device=x.device)
            stream = self.stream
            stream.wait_stream(current)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(stream):
                self.forward(static_in)         # warm-up on the capture stream, as CUDA wants
                stream.synchronize()
                # (thread-local: test_net's reader threads keep making page-locked blobs)
                graph.capture_begin(pool=self.pool, capture_error_mode='thread_local')
                try:
                    static_out = self.forward(static_in)
                finally:
                    graph.capture_end()
            current.wait_stream(stream)
            _check_outputs(static_out)
        except Exception as e:  # noqa: BLE001 -- any failure: eager from now on, said once
            self.failed = True
            self.graphs.clear()
            logger.warning('CUDA graphs of the conv body are off for this run: capturing a %s '
                           'input failed (%s: %s); the eager forward runs instead',
                           'x'.join(str(s) for s in key[0]), type(e).__name__, e)
            return None
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        self.graphs[key] = (static_in, graph, static_out)
        self.captures += 1
        return self.graphs[key]


def can_graph(model):
    """Whether test_net may replay ``model``'s conv body as CUDA graphs: a CUDA model in eval
    mode with a conv body that is not compiled (``--compile`` brings its own graphs)."""
    body = getattr(model, 'Conv_Body', None)
    if body is None or model.training:
        return False
    if type(body).__name__ == 'OptimizedModule' or \
            getattr(body, '_compiled_call_impl', None) is not None:
        return False
    for p in model.parameters():
        return p.is_cuda
    return False


@contextlib.contextmanager
def conv_body_graphs(model, enabled=True, max_graphs=MAX_GRAPHS):
    """While open, ``model.Conv_Body`` runs through a ``GraphedForward`` (yielded; None when not
    ``enabled`` or not ``can_graph(model)``); its graphs and their memory go when it closes."""
    if not (enabled and can_graph(model)):
        yield None
        return
    body = model.Conv_Body
    had_own = 'forward' in body.__dict__
    own = body.__dict__.get('forward')
    graphed = GraphedForward(body, body.forward, max_graphs)
    body.forward = graphed
    try:
        yield graphed
    finally:
        if had_own:
            body.forward = own
        else:
            del body.forward
        if graphed.captures:
            logger.info('Conv body: %d CUDA graphs captured, %d replays', graphed.captures,
                        graphed.replays)
        graphed.graphs.clear()
