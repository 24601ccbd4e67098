"""Random subsampling for the training targets, batched over groups (images) on the device.

Detectron subsamples foreground/background examples per image with numpy's global RNG:
``npr.choice(inds, size=k, replace=False)`` (a uniform random subset) and, for RPN negatives,
``inds[npr.randint(len(inds), size=k)]`` (k draws *with* replacement). These functions draw the
same distributions for every group at once, from ``generator`` (a ``torch.Generator`` on the
inputs' device) or torch's global RNG, with no host synchronisation.
"""
import torch


def random_subset(mask, group, quota, num_groups, generator=None, uniforms=None):
    """For each group g, choose ``min(quota[g], count)`` of the elements where ``mask`` is True
    and ``group == g``, uniformly at random without replacement.

    mask: (E,) bool candidates; group: (E,) int64 in [0, num_groups); quota: (num_groups,) int64
    (or an int for all groups). ``uniforms``: (E,) float64 draws in [0, 1) to rank the elements
    by (default: drawn here from ``generator``); two calls on disjoint candidate sets may share
    them and stay independent. Returns an (E,) bool mask of the chosen elements.
    """
    E = mask.numel()
    device = mask.device
    if E == 0:
        return mask.clone()
    if not torch.is_tensor(quota):
        quota = torch.full((num_groups,), int(quota), dtype=torch.long, device=device)
    # Sort key = group + U[0, 1): candidates end up grouped by group in random order, and
    # non-candidates go to an extra group num_groups after all of them. float64 keeps the
    # 53-bit mantissa well ahead of any realistic number of groups.
    gid = torch.where(mask, group, torch.full_like(group, num_groups))
    if uniforms is None:
        uniforms = torch.rand(E, dtype=torch.float64, device=device, generator=generator)
    keys = gid.to(torch.float64) + uniforms
    order = torch.argsort(keys)
    gid_sorted = gid[order]
    # (bincount would sync the host on CUDA to size its output; scatter_add does not.)
    counts = torch.zeros(num_groups + 1, dtype=torch.long, device=device).scatter_add_(
        0, gid_sorted, torch.ones_like(gid_sorted))
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(E, device=device) - starts[gid_sorted]
    quota_ext = torch.cat([quota.to(device=device, dtype=torch.long),
                           torch.zeros(1, dtype=torch.long, device=device)])
    chosen = torch.zeros_like(mask)
    chosen[order] = rank < quota_ext[gid_sorted]
    return chosen


def draws_with_replacement(mask, num_draws, max_draws, generator=None):
    """Row-wise draws with replacement, as Detectron samples RPN negatives.

    mask: (N, A) bool candidates per row; num_draws: (N,) int64 draws wanted per row (at most
    ``max_draws``, a Python int). Row i draws ``num_draws[i]`` candidates uniformly with
    replacement **only when it has more than num_draws[i] candidates** (Detectron's condition);
    otherwise every candidate of the row is chosen (Detectron labels none there, which
    only happens on images far smaller than the anchors; we keep them all instead).
    Returns an (N, A) bool mask of the rows' distinct chosen candidates.
    """
    N, A = mask.shape
    device = mask.device
    if A == 0 or N == 0 or max_draws <= 0:
        return torch.zeros_like(mask)
    cum = torch.cumsum(mask.to(torch.long), dim=1)             # (N, A)
    n_cand = cum[:, -1]                                        # (N,)
    u = torch.rand((N, max_draws), dtype=torch.float64, device=device, generator=generator)
    r = torch.floor(u * n_cand.unsqueeze(1).to(torch.float64)).to(torch.long)   # (N, D) in [0, n)
    # The (r + 1)-th candidate of the row is the first position where the running count hits r + 1.
    pos = torch.searchsorted(cum, r + 1).clamp_(max=A - 1)     # (N, D)
    draw_ok = torch.arange(max_draws, device=device).unsqueeze(0) < num_draws.unsqueeze(1)
    draw_ok &= (n_cand > num_draws).unsqueeze(1)
    hits = torch.zeros((N, A), dtype=torch.long, device=device)
    hits.scatter_add_(1, pos, draw_ok.to(torch.long))
    chosen = hits > 0
    chosen |= mask & (n_cand <= num_draws).unsqueeze(1)
    return chosen
