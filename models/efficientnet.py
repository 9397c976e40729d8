"""EfficientNet-B0, mirroring torchvision.models.efficientnet (MBConv, squeeze-excitation, SiLU).

Stochastic depth is the identity at inference and is left out. Same state_dict keys as
torchvision's efficientnet_b0; with the same weights the outputs are bitwise equal (torchvision 0.29).
"""
import math

import torch
from torch import nn

from ._common import calibrate_bn_, damp_residuals_, images, perturb_
from .mobilenet import make_divisible

# expand ratio, kernel, stride, in channels, out channels, layers (EfficientNet-B0)
SETTINGS = [[1, 3, 1, 32, 16, 1], [6, 3, 2, 16, 24, 2], [6, 5, 2, 24, 40, 2], [6, 3, 2, 40, 80, 3],
            [6, 5, 1, 80, 112, 3], [6, 5, 2, 112, 192, 4], [6, 3, 1, 192, 320, 1]]


def conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.SiLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))  # (B, C, 1, 1)
        return self.scale_activation(scale) * x


class MBConv(nn.Module):
    def __init__(self, expand: int, kernel: int, stride: int, c_in: int, c_out: int):
        super().__init__()
        self.use_res_connect = stride == 1 and c_in == c_out
        hidden = make_divisible(c_in * expand)
        layers: list[nn.Module] = []
        if hidden != c_in:
            layers.append(conv_bn_act(c_in, hidden, 1))  # pointwise expand
        layers += [
            conv_bn_act(hidden, hidden, kernel, stride, groups=hidden),  # depthwise
            SqueezeExcitation(hidden, max(1, c_in // 4)),
            conv_bn_act(hidden, c_out, 1, act=False),  # pointwise project, linear
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class EfficientNet(nn.Module):
    def __init__(self, width_mult: float = 1.0, depth_mult: float = 1.0, num_classes: int = 1000):
        super().__init__()
        c_stem = make_divisible(SETTINGS[0][3] * width_mult)
        layers: list[nn.Module] = [conv_bn_act(3, c_stem, 3, stride=2)]
        for expand, kernel, stride, c_in, c_out, n in SETTINGS:
            c_in, c_out = make_divisible(c_in * width_mult), make_divisible(c_out * width_mult)
            stage = [MBConv(expand, kernel, stride, c_in, c_out)]  # first block changes shape
            stage += [MBConv(expand, kernel, 1, c_out, c_out) for _ in range(math.ceil(n * depth_mult) - 1)]
            layers.append(nn.Sequential(*stage))
        c_last = 4 * c_out
        layers.append(conv_bn_act(c_out, c_last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(c_last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):  # torchvision: 1/sqrt(out); in keeps 10-class logits O(1)
                bound = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 1280, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)  # (B, num_classes)


CONFIGS = {  # (width multiplier, depth multiplier, classes, image size)
    "tiny": (0.25, 0.5, 10, 32),
    "base": (1.0, 1.0, 1000, 224),
}


def build(size: str, batch: int):
    width, depth, classes, image = CONFIGS[size]
    model = perturb_(EfficientNet(width, depth, classes))
    damp_residuals_([b.block[-1][1] for b in model.modules() if isinstance(b, MBConv) and b.use_res_connect])
    calibrate_bn_(model, images(64 if size == "tiny" else 2, image))  # measured BN statistics
    return model, (images(batch, image),)
