"""MobileNetV2, mirroring torchvision.models.mobilenetv2 (inverted residuals, ReLU6, depthwise).

Same state_dict keys as torchvision; with the same weights the outputs are bitwise equal
(checked against torchvision 0.29 at base size).
"""
import torch
from torch import nn

from ._common import calibrate_bn_, damp_residuals_, images, perturb_

# expansion t, output channels c, repeats n, first stride s (the paper's Table 2)
SETTINGS = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
            [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never more than 10% down (torchvision's rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = round(c_in * expand_ratio)
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(c_in, hidden, kernel=1))  # pointwise expand
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),  # depthwise 3x3
            nn.Conv2d(hidden, c_out, 1, bias=False),  # pointwise project, linear
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000):
        super().__init__()
        c_in = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU(3, c_in, stride=2)]
        for t, c, n, s in SETTINGS:
            c_out = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        features.append(ConvBNReLU(c_in, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 1280, H/32, W/32)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)  # (B, num_classes)


CONFIGS = {  # (width multiplier, classes, image size)
    "tiny": (0.25, 10, 32),
    "base": (1.0, 1000, 224),
}


def build(size: str, batch: int):
    width, classes, image = CONFIGS[size]
    model = perturb_(MobileNetV2(width, classes))
    blocks = [b for b in model.modules() if isinstance(b, InvertedResidual) and b.use_res_connect]
    damp_residuals_([b.conv[-1] for b in blocks])
    calibrate_bn_(model, images(64 if size == "tiny" else 2, image))  # measured BN statistics
    return model, (images(batch, image),)
