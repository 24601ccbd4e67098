"""RetinaNet's losses against float64 references written from Detectron's Caffe2 kernels
(``SigmoidFocalLoss``, ``SoftmaxFocalLoss``, ``SelectSmoothL1Loss``: forward *and* their
hand-written gradients), element by element; plus gradcheck."""
import numpy as np
import pytest
import torch

from pydetectron.modeling.focal_loss import (select_smooth_l1_loss, sigmoid_focal_loss,
                                             softmax_focal_loss)

FLT_MIN = np.finfo(np.float32).tiny


def _ref_sigmoid(x, t, fg_num, gamma, alpha):
    """SigmoidFocalLoss(Gradient) kernels, loop by loop: (loss, dloss/dx) in float64."""
    N, D, H, W = x.shape
    A = t.shape[1]
    K = D // A
    Np = max(fg_num, 1.0)
    zn, zp = (1.0 - alpha) / Np, alpha / Np
    loss, grad = 0.0, np.zeros_like(x)
    for n, c, yy, xx in np.ndindex(N, D, H, W):
        a, d = c // K, c % K
        lbl = t[n, a, yy, xx]
        c1 = float(lbl == d + 1)
        c2 = float(lbl != -1 and lbl != d + 1)
        v = x[n, c, yy, xx]
        p = 1. / (1. + np.exp(-v))
        term1 = (1. - p) ** gamma * np.log(max(p, FLT_MIN))
        log1mp = -v * (v >= 0) - np.log(1. + np.exp(v - 2. * v * (v >= 0)))
        term2 = p ** gamma * log1mp
        loss += -c1 * term1 * zp - c2 * term2 * zn
        g1 = (1. - p) ** gamma * (1. - p - p * gamma * np.log(max(p, FLT_MIN)))
        g2 = p ** gamma * (log1mp * (1. - p) * gamma - p)
        grad[n, c, yy, xx] = -c1 * zp * g1 - c2 * zn * g2
    return loss, grad


def _ref_softmax(x, t, fg_num, gamma, alpha):
    """SoftmaxFocalLoss(Gradient) kernels: (loss, dloss/dx) in float64."""
    N, D, H, W = x.shape
    A = t.shape[1]
    K = D // A
    Np = max(fg_num, 1.0)
    loss, grad = 0.0, np.zeros_like(x)
    for n, a, yy, xx in np.ndindex(N, A, H, W):
        logits = x[n, a * K:(a + 1) * K, yy, xx]
        e = np.exp(logits - logits.max())
        P = e / e.sum()
        lbl = t[n, a, yy, xx]
        if lbl < 0:
            continue
        z = (1 - alpha) / Np if lbl == 0 else alpha / Np
        p = P[lbl]
        loss += -((1 - p) ** gamma * np.log(max(p, FLT_MIN))) * z
        logp = np.log(max(p, FLT_MIN))
        buff = (-(1 - p) ** gamma + gamma * (1 - p) ** (gamma - 1) * p * logp) * z
        for c in range(K):
            grad[n, a * K + c, yy, xx] = buff * (float(lbl == c) - P[c])
    return loss, grad


def _ref_select_smooth_l1(pred, target, locs, fg_num, beta):
    """SelectSmoothL1Loss: pred (N, D, H, W); rows of locs (n, c, y, x) select 4 channels."""
    loss, grad = 0.0, np.zeros_like(pred)
    S = max(fg_num, 1.0)
    for i, (n, c, yy, xx) in enumerate(locs):
        for j in range(4):
            val = pred[n, c + j, yy, xx] - target[i, j]
            if abs(val) < beta:
                loss += 0.5 * val * val / beta / S
                grad[n, c + j, yy, xx] = val / beta / S
            else:
                loss += (abs(val) - 0.5 * beta) / S
                grad[n, c + j, yy, xx] = np.sign(val) / S
    return loss, grad


def _inputs(seed, N=2, A=3, K=4, H=3, W=5, softmax=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, A * K, H, W, generator=g, dtype=torch.float64) * 3
    hi = K if softmax else K + 1  # softmax labels 0..K-1; sigmoid labels 0..K (class k -> k + 1)
    t = torch.randint(-1, hi, (N, A, H, W), generator=g)
    return x, t


CASES = [(2.0, 0.25, 7.0), (0.0, 0.5, 0.3), (1.5, 0.75, 3.0)]  # gamma, alpha, fg_num


@pytest.mark.parametrize('gamma,alpha,fg_num', CASES)
def test_sigmoid_focal_loss_matches_detectron_kernels(gamma, alpha, fg_num):
    x, t = _inputs(0)
    x.requires_grad_(True)
    loss = sigmoid_focal_loss(x, t, torch.tensor(fg_num, dtype=torch.float64), gamma, alpha)
    loss.backward()
    ref_loss, ref_grad = _ref_sigmoid(x.detach().numpy(), t.numpy(), fg_num, gamma, alpha)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize('gamma,alpha,fg_num', CASES)
def test_softmax_focal_loss_matches_detectron_kernels(gamma, alpha, fg_num):
    x, t = _inputs(1, softmax=True)
    x.requires_grad_(True)
    loss = softmax_focal_loss(x, t, torch.tensor(fg_num, dtype=torch.float64), gamma, alpha)
    loss.backward()
    ref_loss, ref_grad = _ref_softmax(x.detach().numpy(), t.numpy(), fg_num, gamma, alpha)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=1e-10, atol=1e-14)


def test_select_smooth_l1_matches_detectron_kernel():
    g = torch.Generator().manual_seed(2)
    N, A, H, W, beta, fg_num = 2, 3, 4, 5, 0.11, 6.0
    pred = (torch.randn(N, A, 4, H, W, generator=g, dtype=torch.float64) * 0.2).requires_grad_()
    target = torch.randn(N, A, 4, H, W, generator=g, dtype=torch.float64) * 0.2
    fg = torch.rand(N, A, H, W, generator=g) < 0.3
    loss = select_smooth_l1_loss(pred, target, fg, torch.tensor(fg_num), beta)
    loss.backward()
    locs = [(n, 4 * a, y, x) for n, a, y, x in np.argwhere(fg.numpy())]
    tgt_rows = np.stack([target[n, c // 4, :, y, x].numpy() for n, c, y, x in locs])
    ref_loss, ref_grad = _ref_select_smooth_l1(
        pred.detach().reshape(N, A * 4, H, W).numpy(), tgt_rows, locs, fg_num, beta)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(pred.grad.reshape(N, A * 4, H, W).numpy(), ref_grad,
                               rtol=1e-12, atol=1e-15)


def test_gradcheck_and_normalizer_floor():
    x, t = _inputs(3, N=1, A=2, K=3, H=2, W=2)
    x = x.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: sigmoid_focal_loss(v, t, torch.tensor(2.)), (x,))
    xs, ts = _inputs(4, N=1, A=2, K=3, H=2, W=2, softmax=True)
    xs = xs.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: softmax_focal_loss(v, ts, torch.tensor(2.)), (xs,))
    # max(fg_num, 1): a normaliser below 1 divides by 1
    a = sigmoid_focal_loss(x.detach(), t, torch.tensor(0.25))
    b = sigmoid_focal_loss(x.detach(), t, torch.tensor(1.0))
    assert a.item() == b.item()


def test_ignored_labels_contribute_nothing():
    x, _ = _inputs(5)
    t = torch.full((2, 3, 3, 5), -1)
    assert sigmoid_focal_loss(x, t, torch.tensor(1.)).item() == 0.0
    assert softmax_focal_loss(x, t, torch.tensor(1.)).item() == 0.0
