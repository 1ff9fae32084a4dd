"""SSAN (Ding et al., 2021): word-to-part attention (WAM) gives part-level text features (PFL),
multi-view non-local relations between parts (PRL, MV-NLN) and a compound ranking loss."""
from .model import SSAN, SSANConfig
from .recipe import SSANRecipe

MODEL, CONFIG, RECIPE = SSAN, SSANConfig, SSANRecipe()
