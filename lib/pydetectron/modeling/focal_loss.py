"""RetinaNet's losses as Detectron's Caffe2 ops define them, written as plain PyTorch expressions
(autograd gives the gradients Detectron's ops hand-code).

Shapes: logits (N, A * K, H, W) with channel ``a * K + k`` (anchor major); labels (N, A, H, W)
int in {-1 (ignored), 0 (background), 1..} ; ``normalizer`` a 0-dim tensor (Detectron's
``retnet_fg_num``), clamped below at 1 as its ops do.

  ``sigmoid_focal_loss`` (``SigmoidFocalLoss``, K = C - 1 sigmoids, class k predicts label k + 1):
      label == k + 1:           -alpha * (1 - p)^gamma * log(p)
      label >= 0, != k + 1:     -(1 - alpha) * p^gamma * log(1 - p)
      label == -1:              0
  ``softmax_focal_loss`` (``SoftmaxFocalLoss``, K = C with background 0, a softmax per anchor):
      label >= 0:               -(1 - p_label)^gamma * log(p_label) * (alpha if label >= 1 else
                                1 - alpha)
  ``select_smooth_l1_loss`` (``SelectSmoothL1Loss``): Detectron's smooth L1 with ``beta`` summed
      over the 4 coordinates of the foreground anchors.
Each sums over the whole blob and divides by max(normalizer, 1).

log(p) and log(1 - p) are ``logsigmoid(x)`` and ``logsigmoid(-x)`` (Detectron: log(max(p,
FLT_MIN)) and a stable log(1 - p)); they differ only for |x| > ~87, where Detectron's log(p)
saturates at log(FLT_MIN). A fused kernel was not written: these expressions are what every
framework's focal loss does, and on the CPU they are not the bottleneck of a RetinaNet step
(see the report of issue 20).
"""
import torch
import torch.nn.functional as F

__all__ = ["sigmoid_focal_loss", "softmax_focal_loss", "select_smooth_l1_loss"]


def _check(logits, labels, op):
    if logits.dim() != 4 or labels.dim() != 4 or logits.shape[0] != labels.shape[0] \
            or logits.shape[2:] != labels.shape[2:] or logits.shape[1] % labels.shape[1] != 0:
        raise ValueError('%s: logits (N, A*K, H, W) and labels (N, A, H, W) do not match: %s, %s'
                         % (op, tuple(logits.shape), tuple(labels.shape)))
    N, D, H, W = logits.shape
    A = labels.shape[1]
    return N, A, D // A, H, W


def _norm(normalizer, like):
    return torch.as_tensor(normalizer, dtype=like.dtype, device=like.device).clamp(min=1.0)


def sigmoid_focal_loss(logits, labels, normalizer, gamma=2.0, alpha=0.25):
    """Detectron's ``SigmoidFocalLoss`` (see the module): a 0-dim tensor."""
    N, A, K, H, W = _check(logits, labels, 'sigmoid_focal_loss')
    x = logits.view(N, A, K, H, W)
    t = labels.view(N, A, 1, H, W)
    cls = torch.arange(1, K + 1, device=labels.device, dtype=labels.dtype).view(1, 1, K, 1, 1)
    pos = t == cls
    neg = (t >= 0) & ~pos
    p = torch.sigmoid(x)
    loss_pos = (-alpha) * (1 - p).pow(gamma) * F.logsigmoid(x)
    loss_neg = (alpha - 1) * p.pow(gamma) * F.logsigmoid(-x)
    zero = x.new_zeros(())
    loss = torch.where(pos, loss_pos, torch.where(neg, loss_neg, zero))
    return loss.sum() / _norm(normalizer, loss)


def softmax_focal_loss(logits, labels, normalizer, gamma=2.0, alpha=0.25):
    """Detectron's ``SoftmaxFocalLoss`` (see the module): a 0-dim tensor."""
    N, A, K, H, W = _check(logits, labels, 'softmax_focal_loss')
    logp = F.log_softmax(logits.view(N, A, K, H, W), dim=2)
    t = labels.long()
    logp_t = logp.gather(2, t.clamp(min=0).unsqueeze(2)).squeeze(2)          # (N, A, H, W)
    p_t = logp_t.exp()
    weight = torch.where(t >= 1, logp_t.new_full((), alpha), logp_t.new_full((), 1 - alpha))
    loss = -(1 - p_t).pow(gamma) * logp_t * weight
    loss = torch.where(t >= 0, loss, loss.new_zeros(()))
    return loss.sum() / _norm(normalizer, loss)


def select_smooth_l1_loss(bbox_pred, bbox_targets, fg_mask, normalizer, beta=0.11):
    """Detectron's ``SelectSmoothL1Loss``: sum over the (N, A, 4, H, W) ``bbox_pred`` /
    ``bbox_targets`` cells where ``fg_mask`` (N, A, H, W) is True of 0.5 x^2 / beta (|x| < beta)
    or |x| - 0.5 beta, divided by max(normalizer, 1): a 0-dim tensor."""
    diff = bbox_pred - bbox_targets
    a = diff.abs()
    elem = torch.where(a < beta, (0.5 / beta) * diff * diff, a - 0.5 * beta)
    elem = torch.where(fg_mask.unsqueeze(2), elem, elem.new_zeros(()))
    return elem.sum() / _norm(normalizer, elem)
