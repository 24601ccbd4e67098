#!/usr/bin/env python3
"""Time pydetectron's ops against a reference in the same run (numbers for BENCHMARK.md).

  --device cuda  RoIAlign forward and forward+backward, NMS (and Soft-NMS, RoIPool) against
                 torchvision.ops (imported here only, when installed), with CUDA events,
                 warm-up and medians.
  --device cpu   RoIAlign forward and NMS against vectorised pure-PyTorch versions of the same ops.

Case (the issue's): features (2, 256, 200, 336), RoIs of 8-300 px, output 7x7, spatial scale
1/4, sampling ratio 2; NMS on 12,000 boxes at IoU 0.7. The CPU case uses 256 RoIs (the pure
PyTorch version gathers every sample of every RoI in memory).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from pydetectron import ops  # noqa: E402


def make_rois(num, batch, img_h, img_w, generator, device):
    """RoIs with sides uniform in [8, 300] px inside an img_h x img_w image."""
    wh = 8 + torch.rand(num, 2, generator=generator) * 292
    x1 = torch.rand(num, generator=generator) * (img_w - wh[:, 0])
    y1 = torch.rand(num, generator=generator) * (img_h - wh[:, 1])
    b = torch.randint(0, batch, (num,), generator=generator).float()
    return torch.stack([b, x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], 1).to(device)


def make_boxes(num, img_h, img_w, generator, device):
    wh = 8 + torch.rand(num, 2, generator=generator) * 292
    x1 = torch.rand(num, generator=generator) * (img_w - wh[:, 0])
    y1 = torch.rand(num, generator=generator) * (img_h - wh[:, 1])
    boxes = torch.stack([x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], 1)
    return boxes.to(device), torch.rand(num, generator=generator).to(device)


def time_cuda(fn, warmup=10, reps=50):
    """Median milliseconds of fn() between CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), min(times), max(times)


def time_cpu_pair(fn, ref, reps=5):
    """Median milliseconds of fn() and of ref(), measured alternately (so that a load change on a
    shared machine hits both alike)."""
    fn(), ref()
    ours, theirs = [], []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ours.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        ref()
        theirs.append((time.perf_counter() - t) * 1e3)
    return (statistics.median(ours), min(ours), max(ours)), (statistics.median(theirs),
                                                             min(theirs), max(theirs))


def time_cpu(fn, warmup=1, reps=5):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), min(times), max(times)


# ------------------------------------------------------------------ pure-PyTorch references
def roi_align_torch(x, rois, out, scale, sr):
    """Vectorised RoIAlign (aligned=False, Caffe2 rules) with gathers: (K, C, out, out)."""
    n, c, h, w = x.shape
    k = rois.shape[0]
    x1, y1, x2, y2 = (rois[:, i] * scale for i in range(1, 5))
    bin_w = (x2 - x1).clamp(min=1) / out
    bin_h = (y2 - y1).clamp(min=1) / out
    i = torch.arange(out * sr, device=x.device, dtype=x.dtype)
    p, s = torch.div(i, sr, rounding_mode="floor"), torch.remainder(i, sr)
    ys = y1[:, None] + p * bin_h[:, None] + (s + 0.5) * bin_h[:, None] / sr  # (K, S)
    xs = x1[:, None] + p * bin_w[:, None] + (s + 0.5) * bin_w[:, None] / sr

    def taps(v, size):
        valid = (v >= -1) & (v <= size)
        v = v.clamp(min=0)
        low = v.floor().long()
        end = low >= size - 1
        low = torch.where(end, size - 1, low)
        high = torch.where(end, low, low + 1)
        v = torch.where(end, low.to(v.dtype), v)
        l = v - low
        return low, high, (1 - l) * valid, l * valid

    yl, yh, wyl, wyh = taps(ys, h)
    xl, xh, wxl, wxh = taps(xs, w)
    feat = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # NHWC rows
    base = rois[:, 0].long()[:, None, None] * (h * w)
    val = 0
    for yi, wy in ((yl, wyl), (yh, wyh)):
        for xi, wx in ((xl, wxl), (xh, wxh)):
            idx = base + yi[:, :, None] * w + xi[:, None, :]        # (K, S, S)
            wgt = (wy[:, :, None] * wx[:, None, :])[..., None]       # (K, S, S, 1)
            val = val + feat[idx] * wgt                              # (K, S, S, C)
    val = val.view(k, out, sr, out, sr, c).mean(dim=(2, 4))          # (K, out, out, C)
    return val.permute(0, 3, 1, 2).contiguous()


def nms_torch(boxes, scores, thresh):
    """Vectorised greedy NMS (+1 widths, IoU >= thresh suppresses)."""
    order = torch.argsort(scores, descending=True, stable=True)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iou = ops.box_iou(boxes[i:i + 1], boxes[rest])[0]
        order = rest[iou < thresh]
    return torch.stack(keep) if keep else boxes.new_zeros((0,), dtype=torch.long)


# ------------------------------------------------------------------------------- benches
def bench_cuda(args):
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 256, 200, 336, generator=g).to(dev)
    rois = make_rois(1024, 2, 800, 1344, g, dev)
    grad = torch.randn(1024, 256, 7, 7, generator=g).to(dev)
    boxes, scores = make_boxes(12000, 800, 1344, g, dev)
    rows = []
    try:
        import torchvision
        from torchvision.ops import nms as tv_nms, roi_align as tv_roi_align
        tv = torchvision.__version__
    except Exception as e:  # pragma: no cover - only where torchvision is missing
        tv, tv_roi_align, tv_nms = None, None, None
        print("torchvision not importable (%s): reference timings skipped" % e)

    def add(name, ours, ref=None, note=""):
        row = {"op": name, "ours_ms": ours[0], "ours_min_ms": ours[1], "note": note}
        if ref is not None:
            row.update(ref_ms=ref[0], ratio=ours[0] / ref[0])
        rows.append(row)

    fwd = lambda: ops.roi_align(x, rois, 7, 0.25, 2)  # noqa: E731
    xg = x.detach().requires_grad_(True)

    def fwd_bwd():
        out = ops.roi_align(xg, rois, 7, 0.25, 2)
        torch.autograd.grad(out, xg, grad)

    if tv_roi_align is not None:
        ref_out = tv_roi_align(x, rois, (7, 7), 0.25, 2, aligned=False)
        diff = (fwd() - ref_out).abs().max().item()
        print("roi_align max |ours - torchvision| = %.3g" % diff)
        tv_fwd = lambda: tv_roi_align(x, rois, (7, 7), 0.25, 2, aligned=False)  # noqa: E731

        def tv_fwd_bwd():
            out = tv_roi_align(xg, rois, (7, 7), 0.25, 2, aligned=False)
            torch.autograd.grad(out, xg, grad)
    add("roi_align fwd", time_cuda(fwd), time_cuda(tv_fwd) if tv_roi_align else None)
    add("roi_align fwd+bwd", time_cuda(fwd_bwd), time_cuda(tv_fwd_bwd) if tv_roi_align else None)
    xh, gh = x.half(), grad.half()
    add("roi_align fwd fp16", time_cuda(lambda: ops.roi_align(xh, rois, 7, 0.25, 2)),
        time_cuda(lambda: tv_roi_align(xh, rois.half(), (7, 7), 0.25, 2)) if tv_roi_align
        else None)
    add("roi_pool fwd", time_cuda(lambda: ops.roi_pool(x, rois, 7, 0.25)))

    keep = ops.nms(boxes, scores, 0.7)
    note = "kept %d" % keep.numel()
    if tv_nms is not None:
        note += " (torchvision, no +1: %d)" % tv_nms(boxes, scores, 0.7).numel()
    add("nms 12000 @0.7", time_cuda(lambda: ops.nms(boxes, scores, 0.7)),
        time_cuda(lambda: tv_nms(boxes, scores, 0.7)) if tv_nms else None, note)
    add("  of which: stable sort", time_cuda(lambda: scores.sort(stable=True, descending=True)))

    idxs = torch.randint(0, 80, (12000,), generator=g).to(dev)
    add("batched_nms 12000, 80 classes", time_cuda(lambda: ops.batched_nms(boxes, scores, idxs, 0.5)))
    b1k, s1k = boxes[:1000].contiguous(), scores[:1000].contiguous()
    add("soft_nms 1000 linear", time_cuda(lambda: ops.soft_nms(b1k, s1k), warmup=3, reps=10),
        time_cuda(lambda: ops.soft_nms(b1k.cpu(), s1k.cpu()), warmup=1, reps=5),
        "ref = our CPU kernel (host clock incl.)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        for name, fn in (("nms", lambda: ops.nms(boxes, scores, 0.7)), ("roi_align fwd+bwd", fwd_bwd)):
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    fn()
                torch.cuda.synchronize()
            print("\n-- %s: GPU time by kernel (5 calls)" % name)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8,
                                            max_name_column_width=60))
    return rows, {"torchvision": tv, "gpu": torch.cuda.get_device_name()}


def bench_cpu(args):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 256, 200, 336, generator=g)
    rois = make_rois(256, 2, 800, 1344, g, "cpu")
    boxes, scores = make_boxes(12000, 800, 1344, g, "cpu")
    diff = (ops.roi_align(x, rois, 7, 0.25, 2) - roi_align_torch(x, rois, 7, 0.25, 2)).abs().max()
    print("roi_align max |ours - pure torch| = %.3g" % diff.item())
    keep, keep_ref = ops.nms(boxes, scores, 0.7), nms_torch(boxes, scores, 0.7)
    assert torch.equal(keep, keep_ref), "nms differs from the pure-PyTorch reference"
    rows = []
    ours, ref = time_cpu_pair(lambda: ops.roi_align(x, rois, 7, 0.25, 2),
                              lambda: roi_align_torch(x, rois, 7, 0.25, 2), reps=7)
    rows.append({"op": "roi_align fwd (256 RoIs)", "ours_ms": ours[0], "ours_min_ms": ours[1],
                 "ref_ms": ref[0], "ratio": ours[0] / ref[0], "note": "ref: vectorised torch"})
    ours, ref = time_cpu_pair(lambda: ops.nms(boxes, scores, 0.7),
                              lambda: nms_torch(boxes, scores, 0.7), reps=3)
    rows.append({"op": "nms 12000 @0.7", "ours_ms": ours[0], "ours_min_ms": ours[1],
                 "ref_ms": ref[0], "ratio": ours[0] / ref[0],
                 "note": "kept %d; ref: vectorised torch" % keep.numel()})
    return rows, {"threads": torch.get_num_threads(), "cpu": _cpu_name(),
                  "load_average": os.getloadavg()}


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--profile", action="store_true",
                        help="(cuda) also print the GPU time of each kernel of nms and roi_align")
    args = parser.parse_args()
    if not ops.extension_available():
        sys.exit("pydetectron._C is not built: run `bash make.sh`")
    rows, info = bench_cuda(args) if args.device == "cuda" else bench_cpu(args)
    info.update(torch=torch.__version__, device=args.device,
                date=time.strftime("%Y-%m-%d"), command=" ".join(sys.argv))
    print("\n%s" % json.dumps(info))
    print("%-32s %10s %10s %8s  %s" % ("op", "ours ms", "ref ms", "ours/ref", "note"))
    for r in rows:
        print("%-32s %10.3f %10s %8s  %s" % (
            r["op"], r["ours_ms"], "%.3f" % r["ref_ms"] if "ref_ms" in r else "-",
            "%.3f" % r["ratio"] if "ratio" in r else "-", r.get("note", "")))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
