"""Detectron *.pkl weights: synthetic files with exactly the blob names and shapes Detectron writes
load with every parameter assigned and nothing left over, save back identically, and a pickle
that would run code is refused without running it.

The blob lists below are written from Detectron's model builders (detectron/modeling/ResNet.py
``add_residual_block`` / ``basic_bn_stem`` / ``ConvAffine`` / ``ConvGN``, FPN.py ``add_fpn``,
``add_fpn_rpn_outputs``, rpn_heads.py, fast_rcnn_heads.py, mask_rcnn_heads.py,
keypoint_rcnn_heads.py and detector.py ``BilinearInterpolation``), independently of the model code.
"""
import json
import os
import pickle
import pickletools
import sys

import numpy as np
import pytest
import torch

from pydetectron.core.config import assert_and_infer_cfg, merge_cfg_from_file, merge_cfg_from_list
from pydetectron.modeling.model_builder import Generalized_RCNN
from pydetectron.utils.detectron_weight_helper import (
    UnsafePickleError, detectron_blobs_of, load_detectron_pkl, load_detectron_weight,
    save_detectron_weight)
from pydetectron.utils.resnet_weights_helper import load_pretrained_imagenet_weights

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
C4_PARAMS_JSON = os.path.join(ROOT, "..", "shared", "data", "detectron_r50c4_predict_net_params.json")

# every test starts from the default cfg and leaves the global cfg as it found it (conftest)
pytestmark = pytest.mark.usefixtures("fresh_cfg")


# ---------------------------------------------------------------------------------------------- #
# Detectron's blob names and shapes
# ---------------------------------------------------------------------------------------------- #

def norm_blobs(blobs, name, dim, gn):
    suffix = "_gn" if gn else "_bn"
    blobs[name + suffix + "_s"] = (dim,)
    blobs[name + suffix + "_b"] = (dim,)


def resnet_blobs(block_counts, groups=1, width=64, gn=False, stem=True, first_stage=2,
                 dim_in=64, prefix="res", dim_inner=None):
    """Backbone blobs: conv1 (+ res_conv1_bn or conv1_gn) and res<k>_<i>_branch{2a,2b,2c,1}."""
    blobs = {}
    if stem:
        blobs["conv1_w"] = (64, 3, 7, 7)
        if gn:
            norm_blobs(blobs, "conv1", 64, gn=True)
        else:
            blobs["res_conv1_bn_s"] = (64,)
            blobs["res_conv1_bn_b"] = (64,)
    for k, n in enumerate(block_counts):
        stage = first_stage + k
        dim_out = 256 * 2 ** (stage - 2)
        inner = dim_inner if dim_inner is not None else groups * width * 2 ** (stage - 2)
        for i in range(n):
            p = "%s%d_%d" % (prefix, stage, i)
            blobs[p + "_branch2a_w"] = (inner, dim_in, 1, 1)
            norm_blobs(blobs, p + "_branch2a", inner, gn)
            blobs[p + "_branch2b_w"] = (inner, inner // groups, 3, 3)
            norm_blobs(blobs, p + "_branch2b", inner, gn)
            blobs[p + "_branch2c_w"] = (dim_out, inner, 1, 1)
            norm_blobs(blobs, p + "_branch2c", dim_out, gn)
            if dim_in != dim_out:
                blobs[p + "_branch1_w"] = (dim_out, dim_in, 1, 1)
                norm_blobs(blobs, p + "_branch1", dim_out, gn)
            dim_in = dim_out
    return blobs


def conv_blobs(blobs, name, dim_out, dim_in, k, bias=True):
    blobs[name + "_w"] = (dim_out, dim_in, k, k)
    if bias:
        blobs[name + "_b"] = (dim_out,)


def fpn_blobs(stage_sums, gn=False):
    """FPN on res5..res2 (``stage_sums`` coarsest first), levels 2..6 by max pooling."""
    blobs = {}
    dims = (2048, 1024, 512, 256)
    for i, (s, d) in enumerate(zip(stage_sums, dims)):
        name = "fpn_inner_" + s if i == 0 else "fpn_inner_%s_lateral" % s
        conv_blobs(blobs, name, 256, d, 1, bias=not gn)
        if gn:
            norm_blobs(blobs, name, 256, gn=True)
        conv_blobs(blobs, "fpn_" + s, 256, 256, 3, bias=not gn)
        if gn:
            norm_blobs(blobs, "fpn_" + s, 256, gn=True)
    conv_blobs(blobs, "conv_rpn_fpn2", 256, 256, 3)
    conv_blobs(blobs, "rpn_cls_logits_fpn2", 3, 256, 1)
    conv_blobs(blobs, "rpn_bbox_pred_fpn2", 12, 256, 1)
    return blobs


def fc_blobs(blobs, name, dim_out, dim_in):
    blobs[name + "_w"] = (dim_out, dim_in)
    blobs[name + "_b"] = (dim_out,)


def box_outputs(blobs, dim, num_classes):
    fc_blobs(blobs, "cls_score", num_classes, dim)
    fc_blobs(blobs, "bbox_pred", 4 * num_classes, dim)


def faster_r50_c4():
    b = resnet_blobs((3, 4, 6))
    conv_blobs(b, "conv_rpn", 1024, 1024, 3)
    conv_blobs(b, "rpn_cls_logits", 15, 1024, 1)  # RPN.SIZES (32 .. 512) x 3 aspect ratios
    conv_blobs(b, "rpn_bbox_pred", 60, 1024, 1)
    b.update(resnet_blobs((3,), stem=False, first_stage=5, dim_in=1024))  # the res5 box head
    box_outputs(b, 2048, 81)
    return b


R50_SUMS = ("res5_2_sum", "res4_5_sum", "res3_3_sum", "res2_2_sum")


def mask_heads_v1up4convs(b, num_classes=81, gn=False):
    for i in range(1, 5):
        if gn:
            conv_blobs(b, "_mask_fcn%d" % i, 256, 256, 3, bias=False)
            norm_blobs(b, "_mask_fcn%d" % i, 256, gn=True)
        else:
            conv_blobs(b, "_[mask]_fcn%d" % i, 256, 256, 3)
    b["conv5_mask_w"] = (256, 256, 2, 2)  # ConvTranspose weights are (in, out, k, k)
    b["conv5_mask_b"] = (256,)
    conv_blobs(b, "mask_fcn_logits", num_classes, 256, 1)


def mask_r50_fpn():
    b = resnet_blobs((3, 4, 6, 3))
    b.update(fpn_blobs(R50_SUMS))
    fc_blobs(b, "fc6", 1024, 256 * 7 * 7)
    fc_blobs(b, "fc7", 1024, 1024)
    box_outputs(b, 1024, 81)
    mask_heads_v1up4convs(b)
    return b


def keypoint_r50_fpn():
    b = resnet_blobs((3, 4, 6, 3))
    b.update(fpn_blobs(R50_SUMS))
    fc_blobs(b, "fc6", 1024, 256 * 7 * 7)
    fc_blobs(b, "fc7", 1024, 1024)
    box_outputs(b, 1024, 2)
    dim = 256
    for i in range(1, 9):
        conv_blobs(b, "conv_fcn%d" % i, 512, dim, 3)
        dim = 512
    b["kps_score_lowres_w"] = (512, 17, 4, 4)
    b["kps_score_lowres_b"] = (17,)
    # BilinearInterpolation is a (frozen) ConvTranspose: its params are in model_final.pkl
    b["kps_score_w"] = (17, 17, 4, 4)
    b["kps_score_b"] = (17,)
    return b


def mask_x101_32x8d_fpn():
    b = resnet_blobs((3, 4, 23, 3), groups=32, width=8)
    b.update(fpn_blobs(("res5_2_sum", "res4_22_sum", "res3_3_sum", "res2_2_sum")))
    fc_blobs(b, "fc6", 1024, 256 * 7 * 7)
    fc_blobs(b, "fc7", 1024, 1024)
    box_outputs(b, 1024, 81)
    mask_heads_v1up4convs(b)
    return b


def mask_r50_fpn_gn():
    b = resnet_blobs((3, 4, 6, 3), gn=True)
    b.update(fpn_blobs(R50_SUMS, gn=True))
    for i in range(1, 5):
        conv_blobs(b, "head_conv%d" % i, 256, 256, 3, bias=False)
        norm_blobs(b, "head_conv%d" % i, 256, gn=True)
    fc_blobs(b, "fc6", 1024, 256 * 7 * 7)
    box_outputs(b, 1024, 81)
    mask_heads_v1up4convs(b, gn=True)
    return b


CASES = {
    "R-50-C4 Faster": ("configs/baselines/e2e_faster_rcnn_R-50-C4_1x.yaml", faster_r50_c4),
    "R-50-FPN Mask": ("configs/baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml", mask_r50_fpn),
    "R-50-FPN Keypoint": ("configs/baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml", keypoint_r50_fpn),
    "X-101-32x8d-FPN Mask": ("configs/baselines/e2e_mask_rcnn_X-101-32x8d-FPN_1x.yaml",
                             mask_x101_32x8d_fpn),
    "R-50-FPN GN Mask": ("configs/gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn.yaml", mask_r50_fpn_gn),
}


# ---------------------------------------------------------------------------------------------- #
# Helpers
# ---------------------------------------------------------------------------------------------- #

def build(config, extra=()):
    merge_cfg_from_file(os.path.join(ROOT, config))
    merge_cfg_from_list(["MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS", False] + list(extra))
    assert_and_infer_cfg()
    return Generalized_RCNN().eval()


def random_blobs(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.random(shape, dtype=np.float32) - 0.5 for name, shape in shapes.items()}


def write_detectron_file(path, params, momentum=True, extra=None, protocol=4):
    """What Detectron's save_model_to_weights_file writes: params, momentum, preserved blobs, cfg.

    Protocol 4 keeps the test fast (raw bytes); Detectron's own Python-2 protocol-2 layout is the
    one ``save_detectron_weight`` writes, and Python 3's protocol 2 is tested on a small file.
    """
    blobs = dict(params)
    if momentum:  # SGD history of (some of) the trained params
        for name in list(params)[-8:]:
            blobs[name + "_momentum"] = np.zeros_like(params[name])
    blobs.update(extra or {})
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs, "cfg": "MODEL:\n  TYPE: generalized_rcnn\n"}, f,
                    protocol=protocol)


# ---------------------------------------------------------------------------------------------- #
# Tests
# ---------------------------------------------------------------------------------------------- #

@pytest.mark.parametrize("case", sorted(CASES))
def test_synthetic_detectron_file_loads_completely_and_saves_back(case, tmp_path):
    config, blob_shapes = CASES[case]
    model = build(config)
    shapes = blob_shapes()
    params = random_blobs(shapes)
    # preserved blobs of the ImageNet file Detectron trained from (unused by the model)
    extra = {} if "GN" in case else {"conv1_b": np.zeros(64, np.float32),
                                     "fc1000_w": np.zeros((1000, 2048), np.float32),
                                     "fc1000_b": np.zeros(1000, np.float32)}
    src = tmp_path / "model_final.pkl"
    write_detectron_file(src, params, extra=extra)
    # the model's names are exactly Detectron's: no blob missing, none extra
    model_blobs = {b: tuple(t.shape) for _, t, b in detectron_blobs_of(model)}
    assert sorted(set(model_blobs) - set(shapes)) == []
    assert sorted(set(shapes) - set(model_blobs)) == []
    assert model_blobs == shapes

    report = load_detectron_weight(model, str(src))
    assert report.unused_blobs == [] and report.skipped == []
    assert len(report.loaded) == len(shapes)
    for name, tensor, blob in detectron_blobs_of(model):
        assert np.array_equal(tensor.detach().numpy(), params[blob]), (name, blob)
    del params

    out = tmp_path / "saved.pkl"
    save_detectron_weight(model, str(out))
    with open(out, "rb") as f:
        saved = pickle.load(f, encoding="latin1")  # trusted: written just above
    assert set(saved) == {"blobs"}
    assert {k: v.shape for k, v in saved["blobs"].items()} == shapes
    reloaded = load_detectron_pkl(str(src))
    for name, array in saved["blobs"].items():
        assert array.dtype == np.float32 and np.array_equal(array, reloaded[name]), name


def test_c4_names_match_detectrons_predict_net():
    """The 116 blob names of a real e2e_faster_rcnn_R-50-C4 predict net (AffineChannel scales
    folded into the convs, so no *_bn_s there) are exactly ours minus the _bn_s."""
    if not os.path.isfile(C4_PARAMS_JSON):
        pytest.skip("../shared/data/detectron_r50c4_predict_net_params.json not present")
    with open(C4_PARAMS_JSON) as f:
        real = json.load(f)
    model = build("configs/baselines/e2e_faster_rcnn_R-50-C4_1x.yaml")
    ours = {b for _, _, b in detectron_blobs_of(model)}
    assert len(real) == 116
    assert {b for b in ours if not b.endswith("_bn_s")} == set(real)


def test_saved_file_is_detectrons_python2_format(tmp_path):
    model = build("configs/baselines/e2e_faster_rcnn_R-50-C4_1x.yaml")
    path = tmp_path / "w.pkl"
    save_detectron_weight(model, str(path))
    data = path.read_bytes()
    ops = list(pickletools.genops(data))
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    # numpy 1.x / Python 2 names (numpy 2 would write numpy._core), no _codecs.encode
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert not any(op.name in ("BINUNICODE", "SHORT_BINUNICODE") for op, _, _ in ops)
    # round trip, bit-exact
    before = {b: t.detach().clone() for _, t, b in detectron_blobs_of(model)}
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    load_detectron_weight(model, str(path))
    for _, t, b in detectron_blobs_of(model):
        assert torch.equal(t, before[b]), b


def test_flat_dict_imagenet_file_loads_the_backbone_only(tmp_path):
    model = build("configs/baselines/e2e_mask_rcnn_R-50-C4_1x.yaml")
    # R-50.pkl: a flat dict with the stem, res2..res5, conv1_b and the fc1000 classifier
    shapes = resnet_blobs((3, 4, 6, 3))
    shapes.update(conv1_b=(64,), fc1000_w=(1000, 2048), fc1000_b=(1000,))
    blobs = random_blobs(shapes, seed=1)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f, protocol=4)
    head_before = model.Box_Outs.cls_score.weight.detach().clone()
    report = load_pretrained_imagenet_weights(model, str(path))
    assert report.unused_blobs == []
    # the C4 box head's res5 (and the mask head sharing it) come from the ImageNet res5
    assert torch.equal(model.Box_Head.res5[2].branch2c.weight,
                       torch.from_numpy(blobs["res5_2_branch2c_w"]))
    assert model.Mask_Head.res5 is model.Box_Head.res5
    assert torch.equal(model.Conv_Body.res1.conv1_norm.weight,
                       torch.from_numpy(blobs["res_conv1_bn_s"]))
    assert torch.equal(model.Box_Outs.cls_score.weight, head_before)  # heads keep their init
    # a backbone blob missing from the file is an error naming it
    del blobs["res4_5_branch2b_w"]
    with open(path, "wb") as f:
        pickle.dump(blobs, f, protocol=4)
    with pytest.raises(ValueError, match=r"res4_5_branch2b_w .*Conv_Body\.res4\.5\.branch2b\.weight"):
        load_pretrained_imagenet_weights(model, str(path))


def test_mask_head_res5_falls_back_to_res5_blobs(tmp_path):
    """Detectron's rule: a missing '_[mask]_res5_...' blob is initialised from 'res5_...'."""
    model = build("configs/baselines/e2e_mask_rcnn_R-50-C4_1x.yaml",
                  ["MRCNN.ROI_MASK_HEAD", "mask_rcnn_heads.mask_rcnn_fcn_head_v0up"])
    names = {b for _, _, b in detectron_blobs_of(model)}
    assert "_[mask]_res5_0_branch2a_w" in names and "_[mask]_res5_2_branch2c_bn_b" in names
    shapes = {b: tuple(t.shape) for _, t, b in detectron_blobs_of(model) if not b.startswith("_[")}
    blobs = random_blobs(shapes, seed=2)
    path = tmp_path / "faster.pkl"
    write_detectron_file(path, blobs, momentum=False)
    load_detectron_weight(model, str(path))
    assert torch.equal(model.Mask_Head.head.res5[1].branch2b.weight,
                       torch.from_numpy(blobs["res5_1_branch2b_w"]))


def test_caffe_converted_pth_backbone(tmp_path):
    """resnet50_caffe.pth style: torchvision names, real BN statistics folded into the affines."""
    model = build("configs/baselines/e2e_faster_rcnn_R-50-FPN_1x.yaml")
    g = torch.Generator().manual_seed(0)
    state = {"conv1.weight": torch.randn(64, 3, 7, 7, generator=g)}

    def bn(prefix, dim):
        state[prefix + ".weight"] = torch.rand(dim, generator=g) + 0.5
        state[prefix + ".bias"] = torch.randn(dim, generator=g)
        state[prefix + ".running_mean"] = torch.randn(dim, generator=g)
        state[prefix + ".running_var"] = torch.rand(dim, generator=g) + 0.1

    bn("bn1", 64)
    dim_in = 64
    for layer, n in enumerate((3, 4, 6, 3), start=1):
        inner, dim_out = 64 * 2 ** (layer - 1), 256 * 2 ** (layer - 1)
        for i in range(n):
            p = "layer%d.%d." % (layer, i)
            state[p + "conv1.weight"] = torch.randn(inner, dim_in, 1, 1, generator=g)
            state[p + "conv2.weight"] = torch.randn(inner, inner, 3, 3, generator=g)
            state[p + "conv3.weight"] = torch.randn(dim_out, inner, 1, 1, generator=g)
            for k, d in ((1, inner), (2, inner), (3, dim_out)):
                bn(p + "bn%d" % k, d)
            if dim_in != dim_out:
                state[p + "downsample.0.weight"] = torch.randn(dim_out, dim_in, 1, 1, generator=g)
                bn(p + "downsample.1", dim_out)
            dim_in = dim_out
    state["fc.weight"] = torch.randn(1000, 2048, generator=g)
    state["fc.bias"] = torch.randn(1000, generator=g)
    path = tmp_path / "resnet50_caffe.pth"
    torch.save(state, path)
    report = load_pretrained_imagenet_weights(model, str(path))
    assert report.unused_blobs == []
    body = model.Conv_Body.conv_body
    assert torch.equal(body.res4[5].branch2b.weight, state["layer3.5.conv2.weight"])
    aff = body.res3[0].branch1_norm
    p = "layer2.0.downsample.1."
    scale = state[p + "weight"] / torch.sqrt(state[p + "running_var"] + 1e-5)
    torch.testing.assert_close(aff.weight, scale)
    torch.testing.assert_close(aff.bias, state[p + "bias"] - state[p + "running_mean"] * scale)
    x = torch.randn(1, 512, 4, 4)
    bn_ref = torch.nn.functional.batch_norm(x, state[p + "running_mean"], state[p + "running_var"],
                                            state[p + "weight"], state[p + "bias"], eps=1e-5)
    torch.testing.assert_close(aff(x), bn_ref, rtol=1e-5, atol=1e-5)


def test_fixed_upsampling_kernels_are_optional(tmp_path):
    model = build("configs/baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml")
    blobs = random_blobs(keypoint_r50_fpn())
    kernel = model.Keypoint_Outs.upsample.weight.detach().clone()
    del blobs["kps_score_w"], blobs["kps_score_b"]  # a file without the frozen bilinear blobs
    path = tmp_path / "kps.pkl"
    write_detectron_file(path, blobs, momentum=False)
    report = load_detectron_weight(model, str(path))
    assert sorted(report.skipped) == ["Keypoint_Outs.upsample.bias", "Keypoint_Outs.upsample.weight"]
    assert torch.equal(model.Keypoint_Outs.upsample.weight, kernel)


def test_shape_mismatch_and_skip_class_heads(tmp_path):
    model = build("configs/baselines/e2e_faster_rcnn_R-50-C4_1x.yaml")
    shapes = faster_r50_c4()
    shapes.update(cls_score_w=(21, 2048), cls_score_b=(21,), bbox_pred_w=(84, 2048),
                  bbox_pred_b=(84,))  # trained on PASCAL VOC
    blobs = random_blobs(shapes)
    path = tmp_path / "voc.pkl"
    write_detectron_file(path, blobs, momentum=False)
    with pytest.raises(ValueError) as e:
        load_detectron_weight(model, str(path))
    msg = str(e.value)
    assert "blob cls_score_w has shape (21, 2048) in the file but parameter " \
           "Box_Outs.cls_score.weight has shape (81, 2048)" in msg
    assert "bbox_pred_b" in msg and "skip_class_heads=True" in msg
    init = model.Box_Outs.cls_score.weight.detach().clone()
    report = load_detectron_weight(model, str(path), skip_class_heads=True)
    assert sorted(report.skipped) == ["Box_Outs.bbox_pred.bias", "Box_Outs.bbox_pred.weight",
                                      "Box_Outs.cls_score.bias", "Box_Outs.cls_score.weight"]
    assert torch.equal(model.Box_Outs.cls_score.weight, init)
    assert torch.equal(model.RPN.rpn.conv_rpn.weight, torch.from_numpy(blobs["conv_rpn_w"]))
    del blobs["conv_rpn_b"]
    write_detectron_file(path, blobs, momentum=False)
    with pytest.raises(ValueError, match=r"blob conv_rpn_b \(for parameter RPN\.rpn\.conv_rpn\.bias, "
                                         r"shape \(1024,\)\) is missing"):
        load_detectron_weight(model, str(path), skip_class_heads=True)


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


def test_pickle_that_runs_a_command_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": _RunsCommand(marker)}}, f, protocol=2)
    with pytest.raises(UnsafePickleError) as e:
        load_detectron_pkl(str(path))
    assert str(path) in str(e.value) and "system" in str(e.value)
    assert not marker.exists()
    model = build("configs/baselines/e2e_faster_rcnn_R-50-C4_1x.yaml")
    with pytest.raises(UnsafePickleError):
        load_detectron_weight(model, str(path))
    assert not marker.exists()


def test_pickle_that_imports_a_module_is_refused(tmp_path, monkeypatch):
    # A module whose import would leave a marker; the pickle names a function in it.
    marker = tmp_path / "imported"
    (tmp_path / "evil_weights_mod.py").write_text(
        "open(%r, 'w').close()\ndef f(*a):\n    return a\n" % str(marker))
    monkeypatch.syspath_prepend(str(tmp_path))
    payload = b"\x80\x02}q\x00X\x05\x00\x00\x00blobsq\x01cevil_weights_mod\nf\nq\x02)Rq\x03s."
    path = tmp_path / "evil2.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match="evil_weights_mod.f"):
        load_detectron_pkl(str(path))
    assert not marker.exists() and "evil_weights_mod" not in sys.modules
    # Other classics: builtins.eval, and a torch tensor (torch._utils) are refused too
    for module, name in (("builtins", "eval"), ("__builtin__", "getattr"),
                         ("torch._utils", "_rebuild_tensor_v2"), ("numpy", "load")):
        path.write_bytes(b"\x80\x02c%s\n%s\n)R." % (module.encode(), name.encode()))
        with pytest.raises(UnsafePickleError, match="%s.%s" % (module, name)):
            load_detectron_pkl(str(path))


def test_python3_protocol2_and_python2_style_files_load(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "py3.pkl"
    with open(path, "wb") as f:  # Python 3, protocol 2: bytes go through _codecs.encode
        pickle.dump({"blobs": {"x_w": a, "x_w_momentum": a}, "cfg": "yaml"}, f, protocol=2)
    assert b"_codecs" in path.read_bytes()
    out = load_detectron_pkl(str(path))
    assert set(out) == {"x_w", "x_w_momentum"} and np.array_equal(out["x_w"], a)
    # A Python 2 cPickle file: raw byte strings (BINSTRING) and numpy.core names
    py2 = (b"\x80\x02}q\x00U\x03x_wq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray"
           b"\nq\x03K\x00\x85U\x01b\x87Rq\x04(K\x01K\x02\x85cnumpy\ndtype\nq\x05U\x02f4K\x00K\x01"
           b"\x87Rq\x06(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x08\x00\x00"
           b"\x80?\x00\x00\x00@tbs.")
    path.write_bytes(py2)
    out = load_detectron_pkl(str(path))
    assert out["x_w"].dtype == np.float32 and out["x_w"].tolist() == [1.0, 2.0]


def test_not_a_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.pkl"
    path.write_bytes(b"\x00not a pickle at all")
    with pytest.raises(pickle.UnpicklingError, match="junk.pkl"):
        load_detectron_pkl(str(path))
