"""SynthPedes, the benchmark rendered here: identities, images, captions and the ground truth no
real dataset has (masks, attribute regions, caption spans). ``render`` draws it, ``baseline`` sets
its floor (bag-of-words × colour-histogram CCA) and ceiling (the attribute oracle)."""
from .render import (GT_FILE, PROFILES, REGIONS, SIZE, SPLITS, VERSION, GroundTruth, ensure, ensure_split,
                     load_ground_truth, main, region_mask, write_layout)

__all__ = ["GT_FILE", "PROFILES", "REGIONS", "SIZE", "SPLITS", "VERSION", "GroundTruth", "ensure", "ensure_split",
           "load_ground_truth", "main", "region_mask", "write_layout"]
