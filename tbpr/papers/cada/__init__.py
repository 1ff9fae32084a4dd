"""CADA (Lin et al., 2023): a BLIP-style dual encoder whose text encoder doubles as a decoder for
cross-modal dual association: tokens to patches (ATP), masked attribute prediction (ARA), and a
top-k re-ranking by the decoder's matching heads (CADA-L)."""
from .model import CADA, CADAConfig
from .recipe import CADARecipe

MODEL, CONFIG, RECIPE = CADA, CADAConfig, CADARecipe()
