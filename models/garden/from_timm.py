"""timm image models: base is timm.create_model(name, pretrained=False), tiny the same model
classes with a smaller configuration (fewer blocks and channels, 32x32 images).

Every builder returns (model, (images,)), images (B, 3, H, W) float32.
"""
from __future__ import annotations

from ._libs import TINY_PX, image_model as _image_model, load


def regnety_016(size: str, batch: int):
    timm = load("timm")
    if size == "base":
        model = timm.create_model("regnety_016", pretrained=False)
    else:
        regnet = timm.models.regnet
        # 4 blocks whose widths (8, 16, 24, 40) quantize to 4 stages, as timm requires
        cfg = regnet.RegNetCfg(depth=4, w0=8, wa=12.0, wm=1.5, group_size=8, se_ratio=0.25,
                               stem_width=8)
        model = regnet.RegNet(cfg, num_classes=10)
    bns = [b.conv3.bn for b in model.modules() if isinstance(b, timm.models.regnet.Bottleneck)]
    return _image_model(model, size, batch, bns)


def deit_small_patch16_224(size: str, batch: int):
    tiny = dict(img_size=TINY_PX, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    model = load("timm").create_model("deit_small_patch16_224", pretrained=False,
                                      **(tiny if size == "tiny" else {}))
    return _image_model(model, size, batch)


def efficientnet_b0(size: str, batch: int):
    timm = load("timm")
    if size == "base":
        model = timm.create_model("efficientnet_b0", pretrained=False)
    else:  # timm's block-string notation: depthwise-separable, then inverted residuals with SE
        from timm.models._efficientnet_builder import decode_arch_def
        arch = [["ds_r1_k3_s1_e1_c8_se0.25"], ["ir_r2_k3_s2_e4_c16_se0.25"]]
        model = timm.models.efficientnet.EfficientNet(
            decode_arch_def(arch), num_features=64, stem_size=8, act_layer="swish", num_classes=10)
    from timm.models._efficientnet_blocks import InvertedResidual
    bns = [b.bn3 for b in model.modules() if isinstance(b, InvertedResidual) and b.has_skip]
    return _image_model(model, size, batch, bns)


def convnext_tiny(size: str, batch: int):
    tiny = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=10)  # timm needs 4 stages
    model = load("timm").create_model("convnext_tiny", pretrained=False,
                                      **(tiny if size == "tiny" else {}))
    return _image_model(model, size, batch)


def seresnext26d_32x4d(size: str, batch: int):
    # tiny: one block a stage, 4 groups, channels (8, 16, 32, 64) x4 expansion
    tiny = dict(layers=(1, 1, 1, 1), cardinality=4, base_width=32, stem_width=8,
                channels=(8, 16, 32, 64), num_classes=10)
    timm = load("timm")
    model = timm.create_model("seresnext26d_32x4d", pretrained=False,
                              **(tiny if size == "tiny" else {}))
    bns = [b.bn3 for b in model.modules() if isinstance(b, timm.models.resnet.Bottleneck)]
    return _image_model(model, size, batch, bns)
