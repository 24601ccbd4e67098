#!/usr/bin/env python
"""Where a training step's time goes on real photos: ``tools/train_net_step.py`` itself, run in
this process as ``dev/benchmark_train_net.py`` runs it (coco_mini train2017, Detectron's Mask
R-CNN R-50-FPN config or ``--cfg``, random weights, ``--bs`` images a step, checkpoints off),
with ``--steps`` of its steps after ``--warmup`` ones under ``torch.profiler`` and their stages
labelled.

Stages (record_function ranges): ``step`` (one optimizer update), ``data`` (waiting for the
loader's next minibatch), ``forward`` (the model call, targets and losses included), the model's
parts (``Conv_Body``, ``RPN``, ``Box_Head``, ``Box_Outs``, ``Mask_Head``, ``Mask_Outs``) and
``optimizer`` (``optimizer.step``), the steps of the targets and losses (``TARGET_STEPS``:
``pack_gt``, ``rpn_anchor_targets_flat``, ``generate_proposal_labels``, ...); the backward pass
is what is left of a step (autograd runs it in its own thread).

Writes to DIR (as ``dev/profile_test_net.py`` does): ``summary.json`` (per step: the profiled
wall time, the GPU's busy time, the host's time blocked in synchronising calls, kernel launches,
each stage's host and device time), ``ops.txt`` and ``trace.json.gz``.

    python dev/profile_train_net.py --out prof --bs 2 --warmup 30 --steps 10
    python dev/profile_train_net.py --out prof_gn \
        --cfg configs/gn_baselines/scratch_e2e_mask_rcnn_R-50-FPN_3x_gn.yaml

``--no-profile`` times the same steps without the profiler (its overhead out: the wall time a
step alone); ``--targets fixed|unpadded`` chooses the RoI targets' shapes (the model's
``fixed_target_shapes``; default auto: fixed on CUDA) for an A/B of the two in one process.
"""
import argparse
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'dev'))
sys.path.insert(0, os.path.join(ROOT, 'lib'))
import profile_test_net  # noqa: E402

MODEL_PARTS = profile_test_net.MODEL_PARTS
# the steps of the targets and losses (modeling.losses.generalized_rcnn_losses), labelled as
# stages too: (module, function) pairs, looked up when called
TARGET_STEPS = (('pydetectron.modeling.targets', 'pack_gt'),
                ('pydetectron.modeling.targets', 'pack_polygons'),
                ('pydetectron.modeling.losses', '_rpn_anchors'),
                ('pydetectron.modeling.targets', 'rpn_anchor_targets_flat'),
                ('pydetectron.modeling.losses', 'rpn_losses_flat'),
                ('pydetectron.modeling.targets', 'generate_proposal_labels'),
                ('pydetectron.modeling.losses', 'fast_rcnn_losses'),
                ('pydetectron.modeling.losses', 'mask_rcnn_losses'))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='folder for summary.json, ops.txt, trace')
    p.add_argument('--data', default=None, help='a coco_mini-like folder (default: coco_mini)')
    p.add_argument('--cfg', default='configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml')
    p.add_argument('--bs', type=int, default=2)
    p.add_argument('--nw', type=int, default=4)
    p.add_argument('--warmup', type=int, default=30, help='steps before the profiled ones')
    p.add_argument('--steps', type=int, default=10, help='profiled steps')
    p.add_argument('--scale', type=int, default=800)
    p.add_argument('--max-size', type=int, default=1333)
    p.add_argument('--device', default='cuda')
    p.add_argument('--no-trace', action='store_true', help='skip trace.json.gz')
    p.add_argument('--no-profile', action='store_true',
                   help='time the steps without the profiler (summary.json: the wall time only)')
    p.add_argument('--targets', choices=('auto', 'fixed', 'unpadded'), default='auto',
                   help="the RoI targets' shapes (the model's fixed_target_shapes: auto = fixed "
                        "on CUDA; fixed; unpadded: sized on the host, a synchronisation each)")
    p.add_argument('extra', nargs='*', help='more train_net_step.py arguments (after --)')
    return p.parse_args(argv)


def default_data():
    data = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'data', 'coco_mini'))
    return data if os.path.isdir(data) else os.path.join(ROOT, '.gpu_data', 'coco_mini')


def tool_argv(args, out_dir):
    """train_net_step.py's arguments: benchmark_train_net.py's, SOLVER.MAX_ITER the steps run."""
    data = args.data or default_data()
    spec = 'coco_json:%s:%s' % (os.path.join(data, 'annotations', 'instances_train2017.json'),
                                os.path.join(data, 'images', 'train2017'))
    argv = ['--dataset', spec, '--cfg', os.path.join(ROOT, args.cfg), '--bs', str(args.bs),
            '--nw', str(args.nw), '--no_save', '--skip-test', '--allow_random_frozen_bn',
            '--output_dir', out_dir, '--disp_interval', '1000000',
            '--set', 'MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS', 'False',
            'SOLVER.MAX_ITER', '1000000', 'TRAIN.SCALES', '(%d,)' % args.scale,
            'TRAIN.MAX_SIZE', str(args.max_size), 'TRAIN.WEIGHTS', "''"]
    if args.device == 'cpu':
        argv.append('--no_cuda')
    return argv + list(args.extra)


class StopTraining(Exception):
    """Raised after the profiled steps: training needs no more steps."""


def install(args, state):
    """Labels and the profiler's start / stop around the trainer's steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    from pydetectron.engine import trainer as trainer_mod
    Trainer = trainer_mod.Trainer
    run_step, next_batch, forward = Trainer._run_step, Trainer._next_batch, Trainer._forward

    def labelled_next_batch(self):
        with record_function('stage::data'):
            return next_batch(self)

    def labelled_forward(self, batch):
        with record_function('stage::forward'):
            return forward(self, batch)

    def sync():
        if args.device != 'cpu':
            torch.cuda.synchronize()

    def profiled_run_step(self, step):
        if not state.get('labelled'):
            state['labelled'] = True
            model = getattr(self.model, 'module', self.model)
            model.fixed_target_shapes = {'auto': None, 'fixed': True,
                                         'unpadded': False}[args.targets]
            profile_test_net.label_parts(model, MODEL_PARTS)
            opt_step = self.optimizer.step

            def labelled_opt_step(*a, **k):
                with record_function('stage::optimizer'):
                    return opt_step(*a, **k)
            self.optimizer.step = labelled_opt_step
        done = state.setdefault('done', 0)
        if done == args.warmup:
            activities = [ProfilerActivity.CPU]
            if args.device != 'cpu':
                activities.append(ProfilerActivity.CUDA)
            sync()
            state['prof'] = None if args.no_profile else profile(activities=activities)
            if state['prof'] is not None:
                state['prof'].__enter__()
            state['t0'] = time.perf_counter()
        if done >= args.warmup:
            with record_function('stage::step'):
                out = run_step(self, step)
        else:
            out = run_step(self, step)
        state['done'] = done + 1
        if state['done'] == args.warmup + args.steps:
            sync()
            state['wall'] = time.perf_counter() - state['t0']
            if state['prof'] is not None:
                state['prof'].__exit__(None, None, None)
            raise StopTraining()
        return out

    Trainer._run_step = profiled_run_step
    Trainer._next_batch = labelled_next_batch
    Trainer._forward = labelled_forward
    unlabel = label_functions(TARGET_STEPS)

    def restore():
        Trainer._run_step, Trainer._next_batch, Trainer._forward = run_step, next_batch, forward
        unlabel()
    return restore


def label_functions(steps):
    """A ``stage::<name>`` range around each call of the module functions ``steps`` ((module,
    name) pairs); returns the function that puts the originals back."""
    import functools
    import importlib
    from torch.profiler import record_function
    saved = []
    for module_name, name in steps:
        module = importlib.import_module(module_name)
        fn = getattr(module, name)

        @functools.wraps(fn)
        def labelled(*a, _fn=fn, _label='stage::' + name, **k):
            with record_function(_label):
                return _fn(*a, **k)
        setattr(module, name, labelled)
        saved.append((module, name, fn))

    def restore():
        for module, name, fn in reversed(saved):
            setattr(module, name, fn)
    return restore


def main(argv=None):
    args = parse_args(argv)
    import tempfile
    from pydetectron.core.config import reset_cfg
    train_net_step = profile_test_net.load_tool('train_net_step')
    reset_cfg()             # the tool configures the global config from its defaults, as a
    state = {}              # process of its own would
    restore = install(args, state)
    out_dir = tempfile.mkdtemp(prefix='profile_train_net_')
    try:
        rc = train_net_step.main(tool_argv(args, out_dir))
    except StopTraining:
        rc = 0
    finally:
        restore()
        reset_cfg()
        shutil.rmtree(out_dir, ignore_errors=True)
        if state.get('prof') is not None and 'wall' not in state:   # stopped inside it
            state['prof'].__exit__(None, None, None)
    if rc:          # the tool said why in one line (a bad flag, file or dataset: 2)
        raise SystemExit(rc)
    if 'prof' not in state or 'wall' not in state:
        raise SystemExit('profile_train_net.py: training ended after %d steps, before the %d '
                         'profiled ones' % (state.get('done', 0), args.warmup + args.steps))
    if args.no_profile:
        summary = {'steps': args.steps, 'wall_ms_per_step': 1000. * state['wall'] / args.steps,
                   'images_per_step': args.bs, 'targets': args.targets,
                   'argv': sys.argv[1:] if argv is None else list(argv)}
        profile_test_net.write_summary(args.out, summary)
        return summary
    return profile_test_net.write_profile(
        state['prof'], args.out, args.steps, state['wall'], 'step',
        'cpu' if args.device == 'cpu' else 'cuda', args.no_trace, argv, images_per_step=args.bs)


if __name__ == '__main__':
    main()
