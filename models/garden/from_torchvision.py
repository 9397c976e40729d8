"""torchvision classification models: base is the library's own builder with weights=None, tiny
the same classes with a smaller configuration (fewer blocks and channels, 32x32 images).

Every builder returns (model, (images,)), images (B, 3, H, W) float32.
"""
from __future__ import annotations

import torch
from torch import nn

from ._libs import TINY_PX, image_model as _image_model, load


def _residual_bns(model: nn.Module, block: type) -> list[nn.Module]:
    """The BN ending each residual inverted-bottleneck block (MobileNetV3, EfficientNet)."""
    return [b.block[-1][1] for b in model.modules() if isinstance(b, block) and b.use_res_connect]


def _resnet(size: str, batch: int, name: str, groups: int, width: int):
    tvm = load("torchvision").models
    if size == "base":
        model = getattr(tvm, name)(weights=None)
    else:  # one bottleneck a stage; channels still expand 4x to 2048 (torchvision fixes them)
        model = tvm.ResNet(tvm.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10, groups=groups,
                           width_per_group=width)
    bns = [b.bn3 for b in model.modules() if isinstance(b, tvm.resnet.Bottleneck)]
    return _image_model(model, size, batch, bns)


def resnet50(size: str, batch: int):
    return _resnet(size, batch, "resnet50", groups=1, width=16)


def resnext50_32x4d(size: str, batch: int):
    return _resnet(size, batch, "resnext50_32x4d", groups=4, width=4)


def regnet_y_400mf(size: str, batch: int):
    tvm = load("torchvision").models
    # BlockParams computes the widths with tensors, which fails on the meta device: on the CPU
    with torch.device("cpu"):
        if size == "base":  # the arguments of tvm.regnet_y_400mf
            params = tvm.regnet.BlockParams.from_init_params(depth=16, w_0=48, w_a=27.89, w_m=2.09,
                                                              group_width=8, se_ratio=0.25)
        else:
            params = tvm.regnet.BlockParams.from_init_params(depth=3, w_0=8, w_a=8.0, w_m=2.0,
                                                              group_width=8, se_ratio=0.25)
    model = tvm.RegNet(params) if size == "base" else tvm.RegNet(params, 10, stem_width=8)
    bns = [b.f.c[1] for b in model.modules() if isinstance(b, tvm.regnet.ResBottleneckBlock)]
    return _image_model(model, size, batch, bns)


def mobilenet_v3_large(size: str, batch: int):
    tvm = load("torchvision").models
    if size == "base":
        model = tvm.mobilenet_v3_large(weights=None)
    else:
        # (in, kernel, expanded, out, SE, activation, stride, dilation, width multiplier)
        cfg = tvm.mobilenetv3.InvertedResidualConfig
        blocks = [cfg(8, 3, 8, 8, False, "RE", 1, 1, 1.0),  # no expansion: the first block's form
                  cfg(8, 3, 24, 16, False, "RE", 2, 1, 1.0),
                  cfg(16, 5, 48, 16, True, "HS", 1, 1, 1.0)]  # SE + hardswish, with residual
        model = tvm.MobileNetV3(blocks, last_channel=64, num_classes=10)
    return _image_model(model, size, batch, _residual_bns(model, tvm.mobilenetv3.InvertedResidual))


def efficientnet_b0(size: str, batch: int):
    tvm = load("torchvision").models
    if size == "base":
        model = tvm.efficientnet_b0(weights=None)
    else:
        cfg = tvm.efficientnet.MBConvConfig  # (expand, kernel, stride, in, out, layers)
        blocks = [cfg(1, 3, 1, 8, 8, 1), cfg(4, 3, 2, 8, 16, 2)]  # the second stage has a residual
        model = tvm.EfficientNet(blocks, dropout=0.2, num_classes=10, last_channel=64)
    return _image_model(model, size, batch, _residual_bns(model, tvm.efficientnet.MBConv))


def convnext_tiny(size: str, batch: int):
    tvm = load("torchvision").models
    if size == "base":
        return _image_model(tvm.convnext_tiny(weights=None), size, batch)
    cfg = tvm.convnext.CNBlockConfig  # (in, out, layers)
    model = tvm.ConvNeXt([cfg(16, 32, 1), cfg(32, None, 1)], num_classes=10)
    return _image_model(model, size, batch)


def densenet121(size: str, batch: int):
    tvm = load("torchvision").models
    if size == "base":
        return _image_model(tvm.densenet121(weights=None), size, batch)
    model = tvm.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                         num_classes=10)
    return _image_model(model, size, batch)


def vit_b_16(size: str, batch: int):
    tvm = load("torchvision").models
    if size == "base":
        return _image_model(tvm.vit_b_16(weights=None), size, batch)
    model = tvm.VisionTransformer(image_size=TINY_PX, patch_size=8, num_layers=2, num_heads=2,
                                  hidden_dim=32, mlp_dim=64, num_classes=10)
    return _image_model(model, size, batch)


def swin_t(size: str, batch: int):
    tvm = load("torchvision").models
    if size == "base":
        return _image_model(tvm.swin_t(weights=None), size, batch)
    # 32 px / patch 4 = 8x8 tokens, window 4: the second block of stage 1 is shifted (stage 2,
    # 4x4 tokens, fits one window, where torchvision turns the shift off)
    model = tvm.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 1], num_heads=[1, 2],
                                window_size=[4, 4], num_classes=10)
    return _image_model(model, size, batch)
