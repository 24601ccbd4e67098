"""The solver's learning-rate schedule: Detectron's per-iteration LR with momentum correction.

Before iteration ``it`` runs, ``LRScheduler.set_lr_for_iter(it)`` computes
``lr_policy.get_lr_at_iter(it)`` and, when it differs from the current LR, does what Detectron's
``DetectionModelHelper.UpdateWorkspaceLr`` does:
  * every parameter group gets ``new_lr * lr_mult`` (2x for biases: ``optimizer.py``);
  * a change whose ratio max(new/old, old/new) exceeds ``SOLVER.LOG_LR_CHANGE_THRESHOLD`` is
    logged;
  * with ``SOLVER.SCALE_MOMENTUM``, an old LR above 1e-7 and a ratio above
    ``SOLVER.SCALE_MOMENTUM_THRESHOLD``, the momentum update history is scaled by new / old
    (SGD only; the history of ``MomentumSGD`` is in lr * grad units).
The current LR starts at 0 (Detectron's "dummy value" before training), so iteration 0 sets the
LR without a correction. ``state_dict`` holds the current LR: a resumed run applies the same
corrections as an uninterrupted one.
"""
import logging

from pydetectron.engine import lr_policy

logger = logging.getLogger(__name__)


def get_lr_change_ratio(cur_lr, new_lr):
    """max(new / old, old / new), with both guarded by 1e-10 as in Detectron."""
    eps = 1e-10
    return max(new_lr / max(cur_lr, eps), cur_lr / max(new_lr, eps))


class LRScheduler:
    """Sets the optimizer's per-group LRs iteration by iteration (see the module docstring)."""

    def __init__(self, optimizer, solver_cfg):
        self.optimizer = optimizer
        self.solver_cfg = solver_cfg
        self.cur_lr = 0.0
        self.last_iter = -1

    def get_lr(self, cur_iter):
        return lr_policy.get_lr_at_iter(cur_iter, self.solver_cfg)

    def set_lr_for_iter(self, cur_iter):
        """Apply iteration ``cur_iter``'s LR; returns it."""
        new_lr = self.get_lr(cur_iter)
        self.update_learning_rate(new_lr, cur_iter)
        self.last_iter = cur_iter
        return new_lr

    def update_learning_rate(self, new_lr, cur_iter=None):
        s = self.solver_cfg
        cur_lr = self.cur_lr
        if cur_lr == new_lr:
            return
        ratio = get_lr_change_ratio(cur_lr, new_lr)
        if ratio > s.LOG_LR_CHANGE_THRESHOLD:
            logger.info('Changing learning rate %.6f -> %.6f at iter %s', cur_lr, new_lr,
                        '?' if cur_iter is None else cur_iter)
        for group in self.optimizer.param_groups:
            group['lr'] = new_lr * group.get('lr_mult', 1.0)
        if (s.SCALE_MOMENTUM and cur_lr > 1e-7 and ratio > s.SCALE_MOMENTUM_THRESHOLD
                and hasattr(self.optimizer, 'scale_momentum')):
            correction = new_lr / cur_lr
            logger.info('Scaling update history by %.6f (new lr / old lr)', correction)
            self.optimizer.scale_momentum(correction)
        self.cur_lr = new_lr

    def state_dict(self):
        return {'cur_lr': float(self.cur_lr), 'last_iter': int(self.last_iter),
                'policy': str(self.solver_cfg.LR_POLICY)}

    def load_state_dict(self, state):
        self.cur_lr = float(state['cur_lr'])
        self.last_iter = int(state['last_iter'])
        # The groups' LRs come back with the optimizer's state; set them again in case only the
        # schedule was restored.
        for group in self.optimizer.param_groups:
            group['lr'] = self.cur_lr * group.get('lr_mult', 1.0)
