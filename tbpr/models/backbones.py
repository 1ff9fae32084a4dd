"""Encoders shared by several papers: timm / torchvision CNNs and ViTs, transformers text encoders,
word-embedding RNNs. Pretrained weights load by timm / transformers name or by local path, never
implicitly: ``pretrained=None`` means random initialisation (the offline CPU default).
"""
from __future__ import annotations
