"""The conv body (backbone + FPN) of a CUDA model replayed as CUDA graphs during test_net.

At batch 1 the body's ~140 operators cost the host more time than the GPU needs to run them
(an H100 measured ~6 ms of host time against ~4 ms of kernels an image at 800 / 1333, under the
profiler: ``dev/profile_test_net.py``). A CUDA graph replays them all in one call. The kernels
are the same ones (captured, not compiled), so the features are equal bit for bit to the eager
forward's.

``conv_body_graphs(model)`` is a context manager that, while it is open, routes
``model.Conv_Body``'s forward through a ``GraphedForward``: one graph per input (shape, dtype,
strides), captured the second time that input shape comes (the first time runs eagerly, which
also warms the caches: folded weights, cuDNN's plans), at most ``max_graphs`` of them: once that
many are kept, other shapes run eagerly (none goes to make room: on a dataset of more shapes
than that, replacing the least recently used one would capture again at nearly every image, each
capture costing a few forward passes). All graphs share one memory pool, so the outputs of a
replay are valid only until the next replay: the caller must be done with one image's features
before it asks for the next image's, which test_net's one batch in flight is (test-time
augmentation, which keeps the features of several scales, and several batches in flight do not
get graphs). A shape that fails to capture turns the graphs off for the rest of the context,
with a warning: the eager forward runs instead.

test_net at one image a batch routes ``model.test_front`` instead (``conv_body_graphs(model,
front=True)``): the body, the RPN head, the padded proposals (no host synchronisation:
``generate_multilevel_proposals(..., padded=True)``) and the box head, one graph of two inputs
(blob, im_info) per blob size, so that an image's whole front is one replay; test_net queues the
next image's front on a side stream before it makes the current image's results
(``core.test.FrontAhead``), and the graphs of the body alone, if routed too, run eagerly inside
it (``_as_outer``).

Training (``training_conv_body_graphs(model)``, train_net_step on one GPU): the body's forward and
its backward are captured as a pair of graphs per input layout (``TrainingGraphedForward``), the
same way, and run as one autograd node: the forward graph reads the parameters in place (so the
optimizer's updates are seen), the backward graph writes the gradients of the body's trainable
parameters, which autograd accumulates into ``.grad`` as it would the eager ones; the heads'
losses reach the body through the gradients of its outputs. Under autocast the captured forward
casts the weights itself (autocast's weight cache off inside it), so each replay reads the
weights of that step. One step's replays must be done (forward and backward) before the next
shape's: the trainer's order.
"""
import contextlib
import logging
import threading

import torch

logger = logging.getLogger(__name__)

__all__ = ['GraphedForward', 'TrainingGraphedForward', 'conv_body_graphs',
           'training_conv_body_graphs', 'can_graph', 'can_graph_training']

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


class _GraphsByShape(object):
    """The graphs of ``forward`` (``module``'s) by input key: the first input of a key runs
    eagerly, the second is captured (``_captured``, by the subclass) while fewer than
    ``max_graphs`` are kept and ``_room`` allows; a key that comes when they are full runs
    eagerly (the kept ones stay); all in one memory pool, captured on one side stream."""

    # the warning's words when a capture fails: what runs, and what runs eagerly from then on
    RUN, EAGER = 'run', 'forward runs'

    def __init__(self, module, forward, max_graphs=MAX_GRAPHS):
        self.module, self.forward = module, forward
        self.max_graphs = max_graphs
        self.graphs = {}              # key -> entry, in capture order
        self.seen = set()
        self.pool = self.stream = None
        self.failed = False
        self.captures = self.replays = 0

    def _entry(self, key, x):
        """``key``'s graphs, or None: the first time (eager, which is also the warm-up), when
        the kept graphs are full, or when the capture failed."""
        entry = self.graphs.get(key)
        if entry is None:
            if key not in self.seen:
                self.seen.add(key)
            elif len(self.graphs) < self.max_graphs and self._room(x):
                entry = self._capture(key, x)
        return entry

    def _room(self, x):
        """Whether one more entry fits beside the kept ones (besides ``max_graphs``)."""
        return True

    def _capture(self, key, x):
        """``key``'s entry (``_captured``, by the subclass), kept; None when the capture
        failed, which turns the graphs off (eager from then on, said once)."""
        phase = ['warm-up']         # the subclass names the phase it is in
        try:
            entry = self._captured(key, x, phase)
        except Exception as e:  # noqa: BLE001 -- any failure: eager from now on, said once
            self.failed = True
            self.graphs.clear()
            logger.warning('CUDA graphs of the conv body are off for this %s: capturing the %s '
                           'of a %s input failed (%s: %s); the eager %s instead', self.RUN,
                           phase[0], 'x'.join(str(s) for s in key[0]), type(e).__name__, e,
                           self.EAGER)
            return None
        self.graphs[key] = entry
        self.captures += 1
        return entry

    @contextlib.contextmanager
    def _on_capture_stream(self, x):
        """(a static copy of ``x`` -- a tensor, or a tuple of them: a tuple of copies --, the
        capture stream), that stream current while open; it waits for the current stream first,
        and the current stream waits for it after, failed or not."""
        xs = x if isinstance(x, tuple) else (x,)
        copies = tuple(_static_copy(t) for t in xs)
        static_in = copies if isinstance(x, tuple) else copies[0]
        current = torch.cuda.current_stream(xs[0].device)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
            # one capture stream for all the shapes: the warm-ups' freed blocks stay cached
            # for that stream, to be used again by the next warm-up
            self.stream = torch.cuda.Stream(device=xs[0].device)
        self.stream.wait_stream(current)
        try:
            with torch.cuda.stream(self.stream):
                yield static_in, self.stream
        finally:
            current.wait_stream(self.stream)


def _static_copy(x):
    static = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
    static.copy_(x)
    return static


class _Outer(threading.local):
    depth = 0   # > 0 while a graph of an outer function warms up or captures in this thread


_OUTER = _Outer()


@contextlib.contextmanager
def _as_outer():
    """While open, the graphs of this thread run their forward eagerly: an outer function's
    graph (``test_front``'s) is warming up or capturing, and takes the inner ones' work in."""
    _OUTER.depth += 1
    try:
        yield
    finally:
        _OUTER.depth -= 1


class GraphedForward(_GraphsByShape):
    """``forward(*xs)`` of ``module`` (inference) as one CUDA graph per layout of its input
    tensors ``xs`` (the conv body's blob; ``test_front``'s blob and im_info)."""

    def __call__(self, *xs, **kwargs):
        if (self.failed or kwargs or not xs or _OUTER.depth
                or not all(torch.is_tensor(x) and x.is_cuda for x in xs)
                or torch.is_grad_enabled() or self.module.training):
            return self.forward(*xs, **kwargs)
        # the first input's layout, then the others' (key[0]: the first input's shape)
        key = sum(((tuple(x.shape), x.dtype, x.stride(), x.device) for x in xs), ())
        first = key not in self.seen
        entry = self._entry(key, xs)
        if entry is None:
            if first:
                # the warm-up of the next capture: graphs inside (the body's, under test_front's)
                # run eagerly, as in the capture, and never see this layout on their own
                with _as_outer():
                    return self.forward(*xs)
            return self.forward(*xs)
        static_in, graph, static_out = entry
        for s, x in zip(static_in, xs):
            s.copy_(x)
        graph.replay()
        self.replays += 1
        return static_out

    def _captured(self, key, xs, phase):
        # (not torch.cuda.graph: it empties the caching allocators, the page-locked one too --
        # where test_net's reader threads keep their blobs -- at every capture)
        graph = torch.cuda.CUDAGraph()
        with self._on_capture_stream(xs) as (static_in, stream), _as_outer():
            self.forward(*static_in)        # warm-up on the capture stream, as CUDA wants
            stream.synchronize()
            phase[0] = 'forward'
            # (thread-local: test_net's reader threads keep making page-locked blobs)
            static_out = _capture_into(graph, self.pool, 'thread_local',
                                       lambda: self.forward(*static_in))
        _check_outputs(static_out)
        return static_in, graph, static_out


def _capture_into(graph, pool, mode, run):
    """``run()`` captured into ``graph`` (on the current stream, memory from ``pool``); returns
    its result. A failed capture leaves CUDA's default generator as it was: CUDA ends the capture
    with an error before PyTorch takes the generator out of its capture state, which would make
    every later random draw on the device fail."""
    generator = torch.cuda.default_generators[torch.cuda.current_device()]
    saved = generator.clone_state()
    graph.capture_begin(pool=pool, capture_error_mode=mode)
    try:
        out = run()
    except BaseException:
        try:
            graph.capture_end()
        except Exception:  # noqa: BLE001 -- the first error is the one to report
            pass
        generator.graphsafe_set_state(saved)
        raise
    try:
        graph.capture_end()
    except BaseException:
        generator.graphsafe_set_state(saved)
        raise
    return out


def _outputs_as_list(out):
    return [out] if torch.is_tensor(out) else list(out)


def _like_outputs(kind, flat):
    """``flat`` as the body returned them: one tensor (``kind`` None) or a list or tuple."""
    return flat[0] if kind is None else kind(flat)


class _Entry(object):
    """One input layout's captured training graphs and their static tensors."""
    __slots__ = ('static_in', 'params', 'forward_graph', 'backward_graph', 'structure',
                 'outputs', 'grad_outputs', 'grads', 'differentiable', 'depends')


class _ReplayBody(torch.autograd.Function):
    """The body as one autograd node: forward and backward are replays of the captured graphs;
    the inputs are the image blob (no gradient) and the trainable parameters."""

    @staticmethod
    def forward(ctx, entry, x, *params):
        entry.static_in.copy_(x)
        entry.forward_graph.replay()
        ctx.entry = entry
        ctx.set_materialize_grads(False)    # an output without a gradient comes as None
        return tuple(o.detach() for o in entry.outputs)

    @staticmethod
    def backward(ctx, *grads):
        entry = ctx.entry
        for g, static in zip(grads, entry.grad_outputs):
            if g is None:
                static.zero_()
            else:
                static.copy_(g)
        entry.backward_graph.replay()
        if all(g is not None for g in grads):
            return (None, None) + tuple(entry.grads)
        # as eager autograd: no gradient (None, not zeros) for a parameter none of whose
        # outputs got one (the optimizer skips it: no momentum, no weight decay)
        reached = set()
        for g, depends in zip(grads, entry.depends):
            if g is not None:
                reached |= depends
        return (None, None) + tuple(g if i in reached else None
                                    for i, g in enumerate(entry.grads))


class TrainingGraphedForward(_GraphsByShape):
    """``forward(x)`` of ``module`` in training as a forward and a backward CUDA graph per input
    layout of ``x`` (and autocast state); see the module docstring."""

    RUN, EAGER = 'training run', 'forward and backward run'
    WARMUP = 2      # eager forward + backward passes on the capture stream before a capture
    # (thread-local: the loader's pin-memory thread keeps allocating page-locked memory)
    CAPTURE_MODE = 'thread_local'
    # The pairs' own tensors (input, outputs, gradients: ~0.5 GB a pair at 2 images of
    # 800 x 1333 with FPN) are kept within this share of the GPU's memory: fewer pairs on a
    # smaller GPU (the shapes beyond them train eagerly).
    MEMORY_FRACTION = 0.25

    def __init__(self, module, forward, max_graphs=MAX_GRAPHS):
        super().__init__(module, forward, max_graphs)
        self.entry_bytes = 0    # the largest pair's own memory so far
        self.depends = None     # per output: the indices of the parameters it depends on
        self.aliased = False    # inside a warm-up or capture: the plain forward

    def __call__(self, x, *args, **kwargs):
        if (self.failed or self.aliased or args or kwargs or not torch.is_tensor(x)
                or not x.is_cuda or x.requires_grad or not torch.is_grad_enabled()
                or not self.module.training):
            return self.forward(x, *args, **kwargs)
        autocast = torch.is_autocast_enabled('cuda')
        key = (tuple(x.shape), x.dtype, x.stride(), x.device, autocast,
               torch.get_autocast_dtype('cuda') if autocast else None)
        entry = self._entry(key, x)
        if entry is None:
            return self.forward(x)
        self.replays += 1
        if not entry.differentiable:
            entry.static_in.copy_(x)
            entry.forward_graph.replay()
            return _like_outputs(entry.structure, [o.detach() for o in entry.outputs])
        outs = _ReplayBody.apply(entry, x, *entry.params)
        return _like_outputs(entry.structure, list(outs))

    def _run(self, x, autocast_dtype, aliases):
        """The body on ``x`` with its trainable parameters replaced by ``aliases``: new leaf
        tensors on the same memory, whose autograd nodes are made on the capture stream. (The
        parameters' own nodes may date from an eager step on another stream -- while the
        previous step's graph is still referenced -- and autograd would then make that stream
        wait inside the capture, which invalidates it.)"""
        # autocast's weight cache off: a cast served from it would be left out of the graph
        ctx = (torch.autocast('cuda', dtype=autocast_dtype, cache_enabled=False)
               if autocast_dtype is not None else contextlib.nullcontext())
        self.aliased = True
        try:
            with ctx:
                return torch.func.functional_call(self.module, aliases, (x,), strict=False)
        finally:
            self.aliased = False

    @staticmethod
    def _dependencies(outs, params):
        """Per output, the indices of ``params`` it depends on (the same for every shape)."""
        depends = []
        for o in outs:
            grads = torch.autograd.grad(o, params, torch.zeros_like(o), allow_unused=True,
                                        retain_graph=True)
            depends.append(frozenset(i for i, g in enumerate(grads) if g is not None))
        return depends

    def _room(self, x):
        budget = self.MEMORY_FRACTION * torch.cuda.get_device_properties(x.device).total_memory
        return (len(self.graphs) + 1) * self.entry_bytes <= budget

    def _captured(self, key, x, phase):
        before = torch.cuda.memory_allocated(x.device)
        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        entry = _Entry()
        entry.params, entry.depends = [p for _, p in named], None
        with self._on_capture_stream(x) as (static_in, stream):
            entry.static_in = static_in
            aliases = {n: p.detach().requires_grad_() for n, p in named}
            self._capture_on(entry, stream, aliases, key[5], phase)
        self.entry_bytes = max(self.entry_bytes, torch.cuda.memory_allocated(x.device) - before)
        return entry

    def _capture_on(self, entry, stream, aliases, autocast_dtype, phase):
        """``entry``'s graphs, captured on ``stream`` (current) from its static input."""
        static_in = entry.static_in
        params = list(aliases.values())
        # warm-ups on the capture stream, in this thread and autograd's (cuDNN and cuBLAS
        # handles and workspaces are made there, not in the graph's memory)
        for _ in range(self.WARMUP):
            outs = _outputs_as_list(self._run(static_in, autocast_dtype, aliases))
            _check_outputs(outs)
            need = [o for o in outs if o.requires_grad]
            if need and params:
                if self.depends is None and len(need) == len(outs):
                    self.depends = self._dependencies(outs, params)
                torch.autograd.grad(need, params, [torch.zeros_like(o) for o in need],
                                    allow_unused=True)
            del outs, need
        stream.synchronize()
        entry.differentiable = bool(params)
        forward_graph = torch.cuda.CUDAGraph()
        phase[0] = 'forward'
        with torch.set_grad_enabled(entry.differentiable):
            out = _capture_into(forward_graph, self.pool, self.CAPTURE_MODE,
                                lambda: self._run(static_in, autocast_dtype, aliases))
        outs = _outputs_as_list(out)
        _check_outputs(outs)
        entry.forward_graph = forward_graph
        entry.structure = None if torch.is_tensor(out) else type(out)
        entry.backward_graph = entry.grad_outputs = entry.grads = None
        if entry.differentiable:
            if not all(o.requires_grad for o in outs):
                raise TypeError('an output of the conv body does not depend on its '
                                'trainable parameters')
            entry.grad_outputs = [torch.empty_like(o) for o in outs]
            backward_graph = torch.cuda.CUDAGraph()
            phase[0] = 'backward'
            grads = _capture_into(
                backward_graph, self.pool, self.CAPTURE_MODE,
                lambda: torch.autograd.grad(outs, params, entry.grad_outputs,
                                            allow_unused=True))
            entry.backward_graph = backward_graph
            entry.grads = list(grads)
            entry.depends = self.depends
        # the outputs kept without their autograd graph: its saved activations go back to
        # the pool, for the next shapes' graphs
        entry.outputs = [o.detach() for o in outs]
        del out, outs


def can_graph(model):
    """Whether test_net may replay ``model``'s conv body as CUDA graphs: a CUDA model in eval
    mode with a conv body that is not compiled (``--compile`` brings its own graphs)."""
    return not model.training and _body_can_graph(model)


@contextlib.contextmanager
def _routed(owner, graphed, name='forward'):
    """``owner.<name>`` routed through ``graphed`` while open; put back as it was after."""
    had_own = name in owner.__dict__
    own = owner.__dict__.get(name)
    setattr(owner, name, graphed)
    try:
        yield graphed
    finally:
        if had_own:
            setattr(owner, name, own)
        else:
            delattr(owner, name)
        graphed.graphs.clear()


@contextlib.contextmanager
def _graphed(owner, name, graphs_class, max_graphs, what):
    """``owner.<name>`` (the conv body's ``forward``, a model's ``test_front``) routed through a
    ``graphs_class`` while open (yielded, its ``routes`` naming what it routes); its graphs and
    their memory go when it closes. ``what`` names them in the closing log line."""
    graphed = graphs_class(owner, getattr(owner, name), max_graphs)
    graphed.routes = 'Conv_Body' if name == 'forward' else name
    try:
        with _routed(owner, graphed, name):
            yield graphed
    finally:
        if graphed.captures:
            logger.info('%s: %d CUDA graph%s captured, %d replays', what, graphed.captures,
                        ' pairs' if isinstance(graphed, TrainingGraphedForward) else 's',
                        graphed.replays)


def can_graph_front(model):
    """Whether test_net may replay ``model.test_front`` (body, RPN, proposals, box head) as CUDA
    graphs: ``can_graph(model)``, a model whose test path has that front
    (``Generalized_RCNN.test_front_possible``) and no module with forward hooks (a graph would
    skip them)."""
    if not can_graph(model) or not getattr(model, 'test_front_possible', lambda: False)():
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@contextlib.contextmanager
def conv_body_graphs(model, enabled=True, max_graphs=MAX_GRAPHS, front=False):
    """While open, ``model.Conv_Body`` runs through a ``GraphedForward`` (yielded; None when not
    ``enabled`` or not ``can_graph(model)``); its graphs and their memory go when it closes.

    ``front`` (test_net at one image a batch): ``model.test_front`` -- the body, the RPN, the
    padded proposals and the box head, one graph per blob size -- is routed instead, where
    ``can_graph_front(model)``; the yielded object's ``routes`` says which ('test_front' or
    'Conv_Body'). Its replays' outputs, too, last until the next replay."""
    if not (enabled and can_graph(model)):
        yield None
        return
    if front and can_graph_front(model):
        owner, name, what = model, 'test_front', 'Test front (body, RPN, box head)'
    else:
        owner, name, what = model.Conv_Body, 'forward', 'Conv body'
    with _graphed(owner, name, GraphedForward, max_graphs, what) as graphed:
        yield graphed


def _body_can_graph(model):
    body = getattr(model, 'Conv_Body', None)
    if body is None:
        return False
    if type(body).__name__ == 'OptimizedModule' or \
            getattr(body, '_compiled_call_impl', None) is not None:
        return False
    for p in model.parameters():
        return p.is_cuda
    return False


def can_graph_training(model):
    """Whether train_net_step may run ``model``'s conv body as CUDA graphs: a CUDA model (one
    per process: not one that DataParallel copies to several GPUs each step) whose conv body is
    not compiled and whose inner modules have no forward or backward hooks (a graph would skip
    them; the body's own run around the graphs)."""
    if not _body_can_graph(model):
        return False
    for m in list(model.Conv_Body.modules())[1:]:
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or \
                getattr(m, '_backward_pre_hooks', None):
            return False
    return True


@contextlib.contextmanager
def training_conv_body_graphs(model, enabled=True, max_graphs=MAX_GRAPHS):
    """While open, ``model.Conv_Body`` trains through a ``TrainingGraphedForward`` (yielded;
    None when not ``enabled`` or not ``can_graph_training(model)``); in eval mode or without
    autograd it runs eagerly (test_net's own graphs may route it meanwhile)."""
    if not (enabled and can_graph_training(model)):
        yield None
        return
    with _graphed(model.Conv_Body, 'forward', TrainingGraphedForward, max_graphs,
                  'Conv body in training') as graphed:
        yield graphed
