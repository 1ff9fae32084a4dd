"""Encoders shared by several papers: timm / torchvision CNNs and ViTs, transformers text encoders,
word-embedding RNNs. Pretrained weights load by timm / transformers name (from the hub, or its local
cache when the hub cannot be reached), by local path, or by ``zoo:<name>`` (a member pre-trained here,
tbpr/zoo, checksum-verified), never implicitly: ``pretrained=None`` means random initialisation. A name that can be neither downloaded nor found in the cache is a one-line
error naming the config field to set to a local path or to null (:func:`hub_weights`).
"""
from __future__ import annotations

import contextlib as _contextlib
import functools as _functools
import os as _os
import socket as _socket
from pathlib import Path as _Path

import torch as _torch
from torch import nn as _nn

from .. import zoo as _zoo

HUB_HOST = "huggingface.co"


class PretrainedUnavailable(ValueError):
    """Hub weights named by a config field that cannot be loaded here (offline, not cached)."""


def building_on_meta() -> bool:
    """True while a model is built under ``torch.device("meta")`` (counting parameters): no weights load."""
    return _torch.empty(0).device.type == "meta"


@_functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (checked once per process; ``HF_HUB_OFFLINE=1`` = no)."""
    if _os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        _socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@_contextlib.contextmanager
def _cache_only_when_offline():
    """Hub clients read only their local cache while the hub is unreachable (instead of retrying
    for a minute before they look there)."""
    if hub_reachable():
        yield
        return
    import huggingface_hub.constants as constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_weights(field: str, name: str, load):
    """``load()`` fetches weights ``name`` (a timm / transformers hub name) for config field ``field``;
    offline it reads the hub's local cache only, and when the weights are not there the error is one
    line naming ``field``: set it to a local file or folder, or to null for random initialisation."""
    try:
        with _cache_only_when_offline():
            return load()
    except Exception as err:  # hub clients raise many kinds (OSError, HTTP, offline, not-found)
        reason = "the hub cannot be reached and they are not in its local cache" if not hub_reachable() \
            else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise PretrainedUnavailable(
            f"{field}={name!r}: cannot load these pre-trained weights ({reason}); set {field} to a "
            f"local file or folder holding them, or {field}=null for random initialisation") from None


def _state_dict_file(pretrained: str) -> dict:
    """A state dict from ``zoo:<name>`` (checksum-verified) or a local .safetensors / torch file."""
    if _zoo.is_zoo(pretrained):
        return _zoo.load(pretrained)
    if str(pretrained).endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(pretrained)
    return _torch.load(pretrained, map_location="cpu", weights_only=True)


def _load_trunk(model: _nn.Module, pretrained: str, arch: str) -> _nn.Module:
    """Load a state dict in timm's key layout of ``arch`` into ``model``; a classifier (head / fc /
    pre_logits) may be absent, any other missing key is a one-line error."""
    missing, _ = model.load_state_dict(_state_dict_file(pretrained), strict=False)
    trunk_missing = [k for k in missing if not k.startswith(("head", "fc", "pre_logits"))]
    if trunk_missing:
        raise ValueError(f"{pretrained}: not a {arch} state dict (missing {trunk_missing[:3]} ...)")
    return model


def _is_local(pretrained: str | None) -> bool:
    return pretrained is None or _zoo.is_zoo(pretrained) or _Path(pretrained).exists()


def _timm_model(arch: str, pretrained: str | None, field: str = "pretrained", **kwargs) -> _nn.Module:
    """``arch`` from timm; ``pretrained`` = a timm name (e.g. ``vgg16.tv_in1k``: from the hub or its
    cache), ``zoo:<name>`` or a local state-dict file (.safetensors / .pth) whose keys follow timm's
    ``arch``; None = random init. ``field`` names the config field in errors. Nothing loads on the
    meta device."""
    import timm  # imported where used: 3 s to import, and the small CPU trunks never need it

    if building_on_meta():
        return timm.create_model(arch, pretrained=False, **kwargs)
    if _is_local(pretrained):
        model = timm.create_model(arch, pretrained=False, **kwargs)
        return model if pretrained is None else _load_trunk(model, pretrained, arch)
    if not pretrained.split(".")[0] == arch:
        raise ValueError(f"{field}={pretrained!r} is not a timm name of {arch!r} nor an existing file")
    return hub_weights(field, pretrained, lambda: timm.create_model(pretrained, pretrained=True, **kwargs))


def vgg16_trunk(pretrained: str | None = None, field: str = "pretrained") -> _nn.Module:
    """VGG-16 conv trunk up to and including pool5 (stride 32): 384×128 -> 512×12×4."""
    return _timm_model("vgg16", pretrained, field).features


class _StrideOneResNet(_nn.Module):
    def __init__(self, resnet: _nn.Module):
        super().__init__()
        self.resnet = resnet

    def forward(self, x):
        return self.resnet.forward_features(x)


def resnet50_stride16(pretrained: str | None = None, field: str = "pretrained") -> _nn.Module:
    """ResNet-50 up to layer4 with the first layer4 block's stride set to 1 (PCB): 384×128 -> 2048×24×8."""
    resnet = _timm_model("resnet50", pretrained, field, num_classes=0, global_pool="")
    block = resnet.layer4[0]
    block.conv2.stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    return _StrideOneResNet(resnet)


def vgg_mini(channels: tuple[int, ...] = (16, 32, 64, 64), pretrained: str | None = None,
             field: str = "pretrained") -> _nn.Module:
    """VGG-16's family shrunk for the CPU profiles: timm's VGG class (with BatchNorm, as vgg16_bn) at
    ``channels``, one 3×3 conv-BN-ReLU per stage and a 2×2 max-pool after all but the last (output
    stride 2**(len(channels)-1)); the conv trunk ``.features`` as :func:`vgg16_trunk`. ``pretrained``:
    ``zoo:<name>`` or a local file in timm's VGG layout (``features.*``), None = random init."""
    from timm.models.vgg import VGG  # imported where used (3 s)

    cfg = [c for i, ch in enumerate(channels) for c in ([ch, "M"] if i < len(channels) - 1 else [ch])]
    # the trunk is `.features`; mlp_ratio only shrinks the unused 4096-wide classifier MLP to one unit
    model = VGG(cfg, num_classes=0, norm_layer=_nn.BatchNorm2d, mlp_ratio=1 / 4096)
    if pretrained is not None and not building_on_meta():
        if not _is_local(pretrained):
            raise ValueError(f"{field}={pretrained!r}: vgg_mini loads zoo:<name> or a local file only")
        _load_trunk(model, pretrained, "vgg_mini")
    return model.features


def resnet_small(channels: tuple[int, ...] = (16, 32, 64, 64), layers: tuple[int, ...] = (1, 1, 1, 1),
                 output_stride: int = 8, pretrained: str | None = None,
                 field: str = "pretrained") -> _nn.Module:
    """ResNet's family shrunk for the CPU profiles: timm's ResNet class with BasicBlocks (as ResNet-18
    / 34), stage widths ``channels`` (stem = the first), ``layers`` blocks per stage. output_stride 8
    dilates layer3 / layer4 instead of striding, so a 96×32 input gives the 12×4 map a ResNet-50
    gives at 384×128 (the same stripe geometry); ``forward_features`` returns it. ``pretrained``:
    ``zoo:<name>`` or a local file in timm's ResNet layout, None = random init."""
    from timm.models.resnet import BasicBlock, ResNet  # imported where used (3 s)

    model = ResNet(BasicBlock, tuple(layers), channels=tuple(channels), stem_width=channels[0],
                   output_stride=output_stride, num_classes=0, global_pool="")
    if pretrained is not None and not building_on_meta():
        if not _is_local(pretrained):
            raise ValueError(f"{field}={pretrained!r}: resnet_small loads zoo:<name> or a local file only")
        _load_trunk(model, pretrained, "resnet_small")
    return model


def cnn_trunk(name: str, pretrained: str | None = None, channels: tuple[int, ...] = (16, 32, 64, 64),
              field: str = "pretrained"):
    """(trunk, output channels) for ``name`` in vgg16 | resnet50 | vgg_mini."""
    if name == "vgg16":
        return vgg16_trunk(pretrained, field), 512
    if name == "resnet50":
        return resnet50_stride16(pretrained, field), 2048
    if name == "vgg_mini":
        return vgg_mini(channels, pretrained, field), channels[-1]
    raise ValueError(f"unknown CNN {name!r}; choose vgg16, resnet50 or vgg_mini")


# --- lgur ---
class ViTPatchTokens(_nn.Module):
    """A ViT (DeiT layout) that returns its patch tokens ``[B, N, D]``: [CLS] is prepended and used
    inside the blocks but dropped at the output; no final LayerNorm (LGUR uses 11 of DeiT-S's 12
    blocks and no final norm). Tokens are in row-major grid order (``self.grid`` = rows, cols)."""

    def __init__(self, image_size: tuple[int, int], patch_size: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.vit = VisionTransformer(
            img_size=tuple(image_size), patch_size=patch_size, embed_dim=dim, depth=depth,
            num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=True, num_classes=0, global_pool="",
            final_norm=False, drop_path_rate=drop_path)
        self.grid = (image_size[0] // patch_size, image_size[1] // patch_size)

    def forward(self, images: _torch.Tensor) -> _torch.Tensor:
        return self.vit.forward_features(images)[:, self.vit.num_prefix_tokens:]

    def load_deit(self, pretrained: str, field: str = "vision_pretrained") -> None:
        """Load a (distilled) DeiT checkpoint: a timm name (hub or its cache), ``zoo:<name>`` or a local
        state-dict file.

        The distillation token and its position entry are dropped, the position grid is resized to
        ``self.grid`` (a zoo ViT from the grid in its manifest, a hub DeiT from its square grid) and
        blocks beyond this model's depth are ignored."""
        import timm
        from timm.layers import resample_abs_pos_embed

        if _zoo.is_zoo(pretrained):
            state = _zoo.load(pretrained, grid=self.grid)
        elif _Path(pretrained).exists():
            state = _state_dict_file(pretrained)
        else:
            state = hub_weights(field, pretrained,
                                lambda: timm.create_model(pretrained, pretrained=True).state_dict())
        prefix = 2 if "dist_token" in state else 1
        pos = state["pos_embed"]
        pos = _torch.cat([pos[:, :1], pos[:, prefix:]], dim=1)  # keep [CLS], drop the dist entry
        if pos.shape[1] - 1 != self.grid[0] * self.grid[1]:
            old = int((pos.shape[1] - 1) ** 0.5)
            pos = resample_abs_pos_embed(pos, list(self.grid), [old, old], num_prefix_tokens=1,
                                         interpolation="bilinear", antialias=False)
        state["pos_embed"] = pos
        own = self.vit.state_dict()
        kept = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(kept))
        if missing:
            raise ValueError(f"{pretrained}: not a DeiT/ViT checkpoint of this size (missing {missing[:3]})")
        self.vit.load_state_dict(kept)


class ResNetPatchTokens(_nn.Module):
    """ResNet-50 trunk (stride 32) + bias-free 1×1 conv to ``dim``, flattened row-major to tokens
    ``[B, N, dim]`` (384×128 -> 12×4 = 48 tokens)."""

    def __init__(self, image_size: tuple[int, int], dim: int, pretrained: str | None = None,
                 field: str = "vision_pretrained"):
        super().__init__()
        self.trunk = _timm_model("resnet50", pretrained, field, num_classes=0, global_pool="")
        self.proj = _nn.Conv2d(self.trunk.num_features, dim, 1, bias=False)
        self.grid = (image_size[0] // 32, image_size[1] // 32)

    def forward(self, images: _torch.Tensor) -> _torch.Tensor:
        return self.proj(self.trunk.forward_features(images)).flatten(2).transpose(1, 2)


# --- ssan ---
class StridedCNN(_nn.Module):
    """conv3×3-BN-ReLU stack for CPU profiles whose stem downsamples at once (a stride-1 stem doubles
    the cost): strides (2, 2, 1, 2, 1) give a total stride of 8, so a 96×32 input yields the 12×4 map
    a ResNet-50 gives at 384×128 (the same stripe geometry)."""

    def __init__(self, widths=(32, 64, 64, 128, 128), strides=(2, 2, 1, 2, 1)):
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(f"StridedCNN: widths {widths} and strides {strides} differ in length")
        layers, c_in = [], 3
        for c_out, stride in zip(widths, strides):
            layers += [_nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), _nn.BatchNorm2d(c_out),
                       _nn.ReLU(inplace=True)]
            c_in = c_out
        self.body = _nn.Sequential(*layers)
        self.num_features = c_in

    def forward_features(self, x: _torch.Tensor) -> _torch.Tensor:
        return self.body(x)


def resnet50_trunk(pretrained: str | None = None, field: str = "pretrained") -> _nn.Module:
    """ResNet-50 conv1…layer4, standard last stride (384×128 -> 2048×12×4); ``forward_features``."""
    return _timm_model("resnet50", pretrained, field, num_classes=0, global_pool="")
