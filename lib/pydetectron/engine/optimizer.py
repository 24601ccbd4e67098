"""Parameter groups and optimizers, as Detectron updates parameters.

Parameter groups (the seed's, Detectron.pytorch ``train_net_step.py``), frozen parameters
(``requires_grad`` False: AffineChannel, frozen stages, fixed upsampling) left out entirely:
  'nonbias'  lr multiplier 1, weight decay SOLVER.WEIGHT_DECAY
  'bias'     lr multiplier 2 when SOLVER.BIAS_DOUBLE_LR, weight decay SOLVER.WEIGHT_DECAY only
             when SOLVER.BIAS_WEIGHT_DECAY (Detectron: biases get 2x LR and no decay)
  'gn'       GroupNorm scales, weight decay SOLVER.WEIGHT_DECAY_GN (GroupNorm biases are biases)
A parameter is a bias when its own name (the last dotted part) is ``bias``.

``MomentumSGD`` is Caffe2's ``MomentumSGDUpdate`` that Detectron trains with::

    g := grad + weight_decay * param
    V := momentum * V + lr * g          (V starts at 0)
    param := param - V

Its update history V is measured in units of lr * grad, so when the LR changes Detectron scales
V by new_lr / old_lr (``SOLVER.SCALE_MOMENTUM``; see ``solver.py``). ``torch.optim.SGD`` keeps
its buffer in gradient units and multiplies by the current LR, i.e. it behaves as if every LR
change were corrected; the two agree while the LR is constant and differ after each change that
Detectron leaves uncorrected (the small steps of a linear warm-up, below
``SCALE_MOMENTUM_THRESHOLD``). The seed used ``torch.optim.SGD`` *and* scaled its buffer, which
corrects large changes twice; this module reproduces Detectron instead.
"""
import logging

import torch

logger = logging.getLogger(__name__)

# Group order is part of the checkpoint format (optimizer state is stored per group index).
GROUP_NAMES = ('nonbias', 'bias', 'gn')


class MomentumSGD(torch.optim.Optimizer):
    """SGD with Caffe2's momentum form (see the module docstring). State: 'momentum_buffer' = V."""

    def __init__(self, params, lr=0.0, momentum=0.9, weight_decay=0.0):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError('MomentumSGD: lr, momentum and weight_decay must be >= 0, got '
                             '{}, {}, {}'.format(lr, momentum, weight_decay))
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise RuntimeError('MomentumSGD does not support sparse gradients')
            bufs = []
            for p in params:
                state = self.state[p]
                if 'momentum_buffer' not in state:
                    # Detectron's ConstantFill(value=0.0) of '<param>_momentum'.
                    state['momentum_buffer'] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
                bufs.append(state['momentum_buffer'])
            wd, mu, lr = group['weight_decay'], group['momentum'], group['lr']
            if wd != 0:
                grads = torch._foreach_add(grads, params, alpha=wd)
            torch._foreach_mul_(bufs, mu)
            torch._foreach_add_(bufs, grads, alpha=lr)
            torch._foreach_sub_(params, bufs)
        return loss

    def scale_momentum(self, correction):
        """Multiply every update history V by ``correction`` (Detectron's ``_CorrectMomentum``)."""
        for group in self.param_groups:
            for p in group['params']:
                buf = self.state.get(p, {}).get('momentum_buffer')
                if buf is not None:
                    buf.mul_(correction)


def _is_group_norm(module):
    # torch.nn.GroupNorm, or a project GroupNorm subclass/wrapper named so.
    return isinstance(module, torch.nn.GroupNorm) or type(module).__name__.endswith('GroupNorm')


def get_param_groups(model, solver_cfg):
    """The seed's three parameter groups of ``model``'s trainable parameters.

    Returns a list of dicts for ``torch.optim`` (keys 'params', 'param_names', 'name', 'lr'
    (0: set by the LR schedule before the first step), 'lr_mult', 'weight_decay'), always the
    three groups of ``GROUP_NAMES`` in that order, some possibly empty.
    """
    s = solver_cfg
    gn_param_names = set()
    for mod_name, module in model.named_modules():
        if _is_group_norm(module):
            for p_name, _ in module.named_parameters(recurse=False):
                gn_param_names.add(mod_name + '.' + p_name if mod_name else p_name)
    names = {g: [] for g in GROUP_NAMES}
    params = {g: [] for g in GROUP_NAMES}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.rsplit('.', 1)[-1] == 'bias':
            group = 'bias'
        elif name in gn_param_names:
            group = 'gn'
        else:
            group = 'nonbias'
        names[group].append(name)
        params[group].append(p)
    bias_wd = s.WEIGHT_DECAY if s.BIAS_WEIGHT_DECAY else 0.0
    settings = {
        'nonbias': (1.0, s.WEIGHT_DECAY),
        'bias': (2.0 if s.BIAS_DOUBLE_LR else 1.0, bias_wd),
        'gn': (1.0, s.WEIGHT_DECAY_GN),
    }
    return [{'params': params[g], 'param_names': names[g], 'name': g, 'lr': 0.0,
             'lr_mult': settings[g][0], 'weight_decay': float(settings[g][1])}
            for g in GROUP_NAMES]


def build_optimizer(model, solver_cfg, optimizer_type=None):
    """``MomentumSGD`` ('SGD', Detectron's update) or ``torch.optim.Adam`` ('Adam') over the
    seed's parameter groups. ``optimizer_type`` overrides ``SOLVER.TYPE`` (the ``--o`` flag)."""
    s = solver_cfg
    kind = optimizer_type or getattr(s, 'TYPE', 'SGD')
    if isinstance(kind, bytes):
        kind = kind.decode()
    groups = get_param_groups(model, s)
    n_frozen = sum(1 for _, p in model.named_parameters() if not p.requires_grad)
    logger.info('Parameter groups: %s; %d frozen parameters left out',
                ', '.join('%s %d' % (g['name'], len(g['params'])) for g in groups), n_frozen)
    if kind == 'SGD':
        return MomentumSGD(groups, momentum=s.MOMENTUM)
    if kind == 'Adam':
        return torch.optim.Adam(groups)
    raise ValueError("SOLVER.TYPE / --o must be 'SGD' or 'Adam', got {!r}".format(kind))
