"""IRRA (Jiang & Ye, CVPR 2023): a CLIP dual encoder fine-tuned with similarity distribution
matching (SDM), implicit relation reasoning (IRR: cross-modal masked-token prediction) and an
identity loss; the comparison's reference row."""
from .model import IRRA, IRRAConfig
from .recipe import IRRARecipe

MODEL, CONFIG, RECIPE = IRRA, IRRAConfig, IRRARecipe()
