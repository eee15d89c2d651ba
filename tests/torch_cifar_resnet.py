"""PyTorch reference of the CIFAR ResNet (option-A shortcuts), written from the published
architecture (../shared/README.md), used only as the baseline the JAX port is checked against."""

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if (stride != 1 or cin != cout) else None

    def shortcut(self, x):
        if self.pad is None:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for s, width in enumerate((16, 32, 64), start=1):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, width, 2 if (s > 1 and i == 0) else 1))
                cin = width
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def modules_in_order(self):
        """(name, callable) per JAX module: stem, stage{s}.block{i}, head."""
        out = [("stem", lambda x: F.relu(self.bn1(self.conv1(x))))]
        for s in (1, 2, 3):
            for i, block in enumerate(getattr(self, f"layer{s}")):
                out.append((f"stage{s}.block{i}", block))
        out.append(("head", lambda x: self.linear(F.avg_pool2d(x, x.size(3)).flatten(1))))
        return out

    def forward(self, x):
        for _, m in self.modules_in_order():
            x = m(x)
        return x


def load(path, depth):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    model = CifarResNet(depth)
    model.load_state_dict(sd)
    return model.eval()
