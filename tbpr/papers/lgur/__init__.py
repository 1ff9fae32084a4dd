"""LGUR (Shao et al., ACM MM 2022): a shared dictionary reconstructs both modalities (DGA) and
shared prototypes pool them into part features (PGU)."""
from .model import LGUR, LGURConfig
from .recipe import LGURRecipe

MODEL, CONFIG, RECIPE = LGUR, LGURConfig, LGURRecipe()
