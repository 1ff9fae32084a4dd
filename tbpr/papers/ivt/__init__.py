"""IVT (Shu et al., ECCV Workshops 2022): one shared transformer for both modalities, multi-level
alignment (MLA) and bidirectional mask modelling (BMM), optionally from an ITC + ITM + MLM
pre-training stage."""
from .model import IVT, IVTConfig
from .recipe import IVTRecipe

MODEL, CONFIG, RECIPE = IVT, IVTConfig, IVTRecipe()
