"""RESNETS.BLOCK_COUNTS, STEM_OUT_DIM, RES2_OUT_DIM: thin backbones; Detectron's defaults kept."""
import pytest
import torch

from pydetectron.core.config import cfg, merge_cfg_from_list
from pydetectron.modeling import registry
from pydetectron.modeling.FPN import FPN
from pydetectron.modeling.ResNet import ResNet_convX_body, ResNet_roi_conv5_head, ResNetSpec


# every test starts from the default cfg and leaves the global cfg as it found it (conftest)
pytestmark = pytest.mark.usefixtures("fresh_cfg")


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_defaults_are_detectrons_resnet50():
    assert cfg.RESNETS.BLOCK_COUNTS == (3, 4, 6, 3)
    assert cfg.RESNETS.STEM_OUT_DIM == 64 and cfg.RESNETS.RES2_OUT_DIM == 256
    body = ResNet_convX_body((3, 4, 6, 3), ResNetSpec())
    assert body.res1.dim_out == 64 and body.stage_dims == [256, 512, 1024, 2048]
    assert body.res2[0].branch2a.weight.shape == (64, 64, 1, 1)
    assert body.res5[2].branch2c.weight.shape == (2048, 512, 1, 1)
    # Detectron's strides: none in res2 (after the stem's pool), 2 at the start of res3..res5
    assert [getattr(body, s)[0].branch2a.stride for s in body.stage_names] == \
        [(1, 1), (2, 2), (2, 2), (2, 2)]
    # The depth-from-config bodies equal the named ResNet-50 ones, weight names included
    for generic, named in (("ResNet.ResNet_conv5_body", "ResNet.ResNet50_conv5_body"),
                           ("FPN.fpn_ResNet_conv5_body", "FPN.fpn_ResNet50_conv5_body")):
        a, b = registry.CONV_BODY.get(generic)(), registry.CONV_BODY.get(named)()
        assert _shapes(a) == _shapes(b)
        assert a.detectron_weight_mapping() == b.detectron_weight_mapping()


def test_thin_body_strides_every_stage_after_res2():
    # res3 starts at 64 channels here: Detectron's "dim_in != 64" test would wrongly skip its
    # stride; the thin body must still reach strides 4, 8, 16, 32.
    spec = ResNetSpec(width_per_group=16, stem_out_dim=32, res2_out_dim=64)
    body = ResNet_convX_body((1, 2, 1, 1), spec)
    assert body.res1.conv1.weight.shape == (32, 3, 7, 7)
    assert body.stage_dims == [64, 128, 256, 512]
    assert body.res2[0].branch1.stride == (1, 1)  # 32 -> 64: projection, no stride
    assert body.res3[0].branch1.stride == (2, 2) and body.res3[1].branch1 is None
    outs = body.forward_stages(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 64, 16, 24), (2, 128, 8, 12), (2, 256, 4, 6),
                                               (2, 512, 2, 3)]
    # Equal stem and res2 widths: res2 keeps an identity shortcut, as Detectron's blocks do
    same = ResNet_convX_body((1, 1, 1, 1), ResNetSpec(width_per_group=8, stem_out_dim=32,
                                                      res2_out_dim=32))
    assert same.res2[0].branch1 is None and same.res3[0].branch1.stride == (2, 2)
    fpn = FPN(body, fpn_dim=32, min_level=2, max_level=6)
    assert [tuple(p.shape[-2:]) for p in fpn(torch.randn(1, 3, 64, 96))] == \
        [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]


def test_thin_fpn_body_from_config_and_its_weight_names():
    merge_cfg_from_list(["RESNETS.BLOCK_COUNTS", "(1, 1, 2, 1)", "RESNETS.STEM_OUT_DIM", 16,
                         "RESNETS.RES2_OUT_DIM", 64, "RESNETS.WIDTH_PER_GROUP", 16, "FPN.DIM", 32])
    fpn = registry.CONV_BODY.get("FPN.fpn_ResNet_conv5_body")()
    body = fpn.conv_body
    assert body.block_counts == (1, 1, 2, 1) and body.stage_dims == [64, 128, 256, 512]
    assert body.res4[1].branch2b.weight.shape == (64, 64, 3, 3)  # 16 x 4 in res4
    assert fpn.inner[0].conv.weight.shape == (32, 512, 1, 1)
    mapping, _ = fpn.detectron_weight_mapping()
    assert mapping["conv_body.res4.1.branch2c.weight"] == "res4_1_branch2c_w"
    assert mapping["inner.0.conv.weight"] == "fpn_inner_res5_0_sum_w"  # the last res5 block is _0


def test_res5_head_width_follows_res2_out_dim():
    class _Pool(torch.nn.Module):
        resolution = 14

        def forward(self, x, rois):
            return x

    head = ResNet_roi_conv5_head(128, _Pool(), ResNetSpec(width_per_group=8, res2_out_dim=32))
    assert head.dim_out == 256 and head.res5[0].branch2a.weight.shape == (64, 128, 1, 1)
    assert head(torch.randn(3, 128, 14, 14), None).shape == (3, 256, 1, 1)


@pytest.mark.parametrize("counts", ["(1, 1, 1)", "(1, 0, 1, 1)", "(2, 2, 2, 2, 2)"])
def test_bad_block_counts_name_the_key(counts):
    merge_cfg_from_list(["RESNETS.BLOCK_COUNTS", counts])
    with pytest.raises(ValueError, match="RESNETS.BLOCK_COUNTS"):
        registry.CONV_BODY.get("FPN.fpn_ResNet_conv5_body")()


def test_bad_widths_name_the_key():
    with pytest.raises(ValueError, match="RESNETS.STEM_OUT_DIM"):
        ResNetSpec(stem_out_dim=0)
    with pytest.raises(ValueError, match="RESNETS.RES2_OUT_DIM"):
        ResNetSpec(res2_out_dim=64.0)
