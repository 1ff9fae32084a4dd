"""Encoders shared by several papers: timm / torchvision CNNs and ViTs, transformers text encoders,
word-embedding RNNs. Pretrained weights load by timm / transformers name or by local path, never
implicitly: ``pretrained=None`` means random initialisation (the offline CPU default).
"""
from __future__ import annotations


# --- mia ---
from pathlib import Path as _Path  # noqa: E402

import torch as _torch  # noqa: E402
from torch import nn as _nn  # noqa: E402


def _timm_model(arch: str, pretrained: str | None, **kwargs) -> _nn.Module:
    """``arch`` from timm; ``pretrained`` = a timm name (e.g. ``vgg16.tv_in1k``, downloads) or a local
    state-dict file (.safetensors / .pth) whose keys follow timm's ``arch``; None = random init."""
    import timm

    if pretrained is None or _Path(pretrained).exists():
        model = timm.create_model(arch, pretrained=False, **kwargs)
        if pretrained is not None:
            if str(pretrained).endswith(".safetensors"):
                from safetensors.torch import load_file
                state = load_file(pretrained)
            else:
                state = _torch.load(pretrained, map_location="cpu", weights_only=True)
            missing, _ = model.load_state_dict(state, strict=False)
            trunk_missing = [k for k in missing if not k.startswith(("head", "fc", "pre_logits"))]
            if trunk_missing:
                raise ValueError(f"{pretrained}: not a {arch} state dict (missing {trunk_missing[:3]} ...)")
        return model
    if not pretrained.split(".")[0] == arch:
        raise ValueError(f"pretrained={pretrained!r} is not a timm name of {arch!r} nor an existing file")
    return timm.create_model(pretrained, pretrained=True, **kwargs)


def vgg16_trunk(pretrained: str | None = None) -> _nn.Module:
    """VGG-16 conv trunk up to and including pool5 (stride 32): 384×128 -> 512×12×4."""
    return _timm_model("vgg16", pretrained).features


class _StrideOneResNet(_nn.Module):
    def __init__(self, resnet: _nn.Module):
        super().__init__()
        self.resnet = resnet

    def forward(self, x):
        return self.resnet.forward_features(x)


def resnet50_stride16(pretrained: str | None = None) -> _nn.Module:
    """ResNet-50 up to layer4 with the first layer4 block's stride set to 1 (PCB): 384×128 -> 2048×24×8."""
    resnet = _timm_model("resnet50", pretrained, num_classes=0, global_pool="")
    block = resnet.layer4[0]
    block.conv2.stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    return _StrideOneResNet(resnet)


def vgg_mini(channels: tuple[int, ...] = (16, 32, 64, 64)) -> _nn.Module:
    """A VGG-shaped CPU trunk: [3×3 conv-BN-ReLU] blocks, a 2×2 max-pool after all but the last
    (output stride 2**(len(channels)-1))."""
    layers, c_in = [], 3
    for i, c_out in enumerate(channels):
        layers += [_nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), _nn.BatchNorm2d(c_out),
                   _nn.ReLU(inplace=True)]
        if i < len(channels) - 1:
            layers.append(_nn.MaxPool2d(2))
        c_in = c_out
    return _nn.Sequential(*layers)


def cnn_trunk(name: str, pretrained: str | None = None, channels: tuple[int, ...] = (16, 32, 64, 64)):
    """(trunk, output channels) for ``name`` in vgg16 | resnet50 | vgg_mini."""
    if name == "vgg16":
        return vgg16_trunk(pretrained), 512
    if name == "resnet50":
        return resnet50_stride16(pretrained), 2048
    if name == "vgg_mini":
        if pretrained is not None:
            raise ValueError("vgg_mini has no pretrained weights; set pretrained=None")
        return vgg_mini(channels), channels[-1]
    raise ValueError(f"unknown CNN {name!r}; choose vgg16, resnet50 or vgg_mini")
