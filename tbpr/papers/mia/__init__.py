"""MIA (Niu et al., TIP 2020): global-global (GC), global-local relation attention (RGA) and
phrase-part matching (BFM), trained step by step."""
from .model import MIA, MIAConfig
from .recipe import MIARecipe

MODEL, CONFIG, RECIPE = MIA, MIAConfig, MIARecipe()
