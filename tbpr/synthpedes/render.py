"""SynthPedes: a procedurally rendered text-based person retrieval benchmark.

Hard in the ways CUHK-PEDES is hard (the README's SynthPedes section): identities come in *families*
that differ in one or two (often small) attributes; a colour word covers a range of shades and
captions leave details out; captions are free-form (random attribute subsets and order, synonyms,
templates, distractor clauses, rare typos); garments sit in stable body bands while bags and held
objects move; backgrounds are cluttered; view, pose, framing and photometry vary per image.

Written in the CUHK-PEDES layout (``reid_raw.json`` + ``imgs/``) so the real loader reads it, plus
``synthpedes_gt.json`` and ``gt/*.png`` (per-pixel region labels) with what no real dataset has:
person masks, attribute regions, and per caption the attribute spans, noun phrases and POS tags.

    root = ensure("quick")                    # rendered once, cached under $TBPR_CACHE/synthpedes
    gt = load_ground_truth(root)
    gt.images["train/00001_0.jpg"].mask       # bool [384, 128]
"""
from __future__ import annotations

import argparse
import colorsys
import io
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..cache import cache_dir
from ..data.text import word_tokenize

VERSION = 5  # bump when the output changes: it is part of the cache key
SIZE = (384, 128)  # H, W
GT_FILE = "synthpedes_gt.json"
PROFILES = {  # (train, val, test) identities, images per identity (min, max), captions per image
    "smoke": dict(ids=(40, 10, 20), images=(2, 3), captions=2),
    "quick": dict(ids=(400, 50, 380), images=(3, 4), captions=2),  # test: ~2,650 queries (issue: R1 SE <= 0.7)
    "large": dict(ids=(11000, 1000, 1000), images=(2, 4), captions=2),
    # the pre-training corpus of the zoo (tbpr/zoo): training identities only, drawn from their own
    # random stream with ids from CORPUS_ID_BASE, and none whose attributes a benchmark split holds
    "pretrain": dict(ids=(4000, 0, 0), images=(3, 3), captions=2, corpus=True),
    "pretrain-smoke": dict(ids=(30, 0, 0), images=(2, 2), captions=2, corpus=True),
    # the aligned member's corpus (BLIP's / CLIP's web data): shifted from the benchmark as web data is
    # from CUHK-PEDES (other caption styles and words, other framing, backgrounds, photometry and
    # resolution, no families of near-identical people); its own stream, disjoint like ``pretrain``
    "pretrain-shifted": dict(ids=(8000, 0, 0), images=(2, 2), captions=2, corpus=True, stream=8,
                             family=(1, 1), look="web", captions_style="web"),
}
BENCHMARK_SEEDS = {"smoke": (0, 1), "quick": (0, 1), "large": (0,)}  # renders the benchmarks use
CORPUS_ID_BASE = 100_000  # corpus ids (and so file names and per-image random streams) start above it
CORPUS_STREAM = 7  # identities of a corpus come from default_rng([seed, 0, CORPUS_STREAM])
REGION_CODES = {"head": 1, "hat": 2, "upper": 3, "lower": 4, "shoes": 5, "bag": 6, "held": 7,
                "arms": 8, "legs": 9}
REGIONS = ("head", "hat", "upper", "lower", "shoes", "bag", "held")

# --- palette: a colour word covers a range of shades (the granularity gap) -----------------------
# name: (hue range in degrees, saturation range, value range, caption words)
COLOURS = {
    "black": ((0, 360), (0.0, 0.25), (0.06, 0.20), ["black"]),
    "white": ((0, 360), (0.0, 0.06), (0.86, 0.98), ["white"]),
    "grey": ((0, 360), (0.0, 0.07), (0.38, 0.66), ["grey", "gray"]),
    "red": ((-12, 6), (0.65, 0.9), (0.50, 0.85), ["red"]),
    "orange": ((18, 32), (0.7, 0.95), (0.80, 0.98), ["orange"]),
    "yellow": ((47, 58), (0.6, 0.9), (0.80, 0.97), ["yellow"]),
    "green": ((85, 150), (0.4, 0.8), (0.35, 0.75), ["green"]),
    "blue": ((200, 222), (0.5, 0.85), (0.55, 0.90), ["blue"]),
    "navy": ((215, 235), (0.55, 0.9), (0.18, 0.36), ["navy", "dark blue", "navy blue"]),
    "purple": ((265, 295), (0.35, 0.7), (0.35, 0.70), ["purple", "violet"]),
    "pink": ((325, 350), (0.25, 0.55), (0.80, 0.97), ["pink"]),
    "brown": ((18, 32), (0.45, 0.75), (0.22, 0.45), ["brown"]),
    "beige": ((30, 45), (0.18, 0.38), (0.66, 0.86), ["beige", "khaki", "tan"]),
}
HAIR_COLOURS = {
    "black": ((20, 30), (0.2, 0.5), (0.05, 0.14), ["black", "dark"]),
    "brown": ((18, 30), (0.45, 0.7), (0.2, 0.4), ["brown"]),
    "blonde": ((40, 50), (0.35, 0.6), (0.70, 0.90), ["blonde", "blond"]),
    "grey": ((0, 360), (0.0, 0.06), (0.60, 0.85), ["grey", "gray", "white"]),
    "red": ((8, 18), (0.6, 0.8), (0.40, 0.60), ["red", "ginger"]),
}
SKINS = [((22, 28), (0.22, 0.33), (0.88, 0.97)), ((20, 28), (0.35, 0.50), (0.68, 0.82)),
         ((18, 26), (0.45, 0.60), (0.36, 0.52))]
# how often each colour is worn (skewed like real street clothing)
UPPER_COLOUR_P = dict(black=.2, white=.14, grey=.1, red=.08, orange=.03, yellow=.04, green=.06,
                      blue=.09, navy=.07, purple=.04, pink=.05, brown=.05, beige=.05)
LOWER_COLOUR_P = dict(black=.34, white=.05, grey=.12, red=.02, blue=.16, navy=.1, brown=.05,
                      beige=.1, green=.03, pink=.02, purple=.01)
SHOE_COLOUR_P = dict(black=.36, white=.3, grey=.1, brown=.1, red=.04, blue=.05, navy=.02, pink=.03)
BAG_COLOUR_P = dict(black=.4, grey=.1, brown=.12, red=.08, blue=.08, navy=.06, pink=.05, green=.05,
                    white=.03, beige=.03)
HAIR_COLOUR_P = dict(black=.55, brown=.28, blonde=.12, red=.05)

# --- garments and objects: caption words (several words = one multi-word noun) -------------------
UPPER_WORDS = {"t-shirt": ["t-shirt", "tee", "top"], "shirt": ["shirt", "top", "blouse"],
               "jacket": ["jacket", "coat"], "coat": ["coat", "long coat", "overcoat"],
               "sweater": ["sweater", "jumper", "pullover"], "dress": ["dress"]}
LOWER_WORDS = {"pants": ["pants", "trousers", "slacks"], "jeans": ["jeans"],
               "shorts": ["shorts"], "skirt": ["skirt"], "leggings": ["leggings"]}
SHOE_WORDS = {"shoes": ["shoes"], "sneakers": ["sneakers", "trainers", "shoes"],
              "boots": ["boots"]}
HAT_WORDS = {"cap": ["cap", "baseball cap"], "beanie": ["beanie", "hat", "knit hat"]}
BAG_WORDS = {"backpack": ["backpack", "rucksack", "bag"], "handbag": ["handbag", "bag", "purse"],
             "shoulder": ["shoulder bag", "bag", "messenger bag"]}
HELD_WORDS = {"umbrella": ["umbrella"], "phone": ["phone", "cell phone", "mobile phone"],
              "bottle": ["bottle", "water bottle"], "cup": ["cup", "coffee cup"]}
GLASSES_WORDS = {"glasses": ["glasses", "eyeglasses"], "sunglasses": ["sunglasses"]}
PLURAL_NOUNS = {"pants", "trousers", "slacks", "jeans", "shorts", "leggings", "shoes", "sneakers",
                "trainers", "boots", "glasses", "eyeglasses", "sunglasses", "sleeves"}
PERSON_NOUNS = {  # (gender, age) -> words
    ("male", "young"): ["boy", "young man", "teenager"], ("female", "young"): ["girl", "young woman",
                                                                             "young lady"],
    ("male", "adult"): ["man", "guy", "gentleman", "male"], ("female", "adult"): ["woman", "lady",
                                                                                 "female"],
    ("male", "old"): ["old man", "elderly man", "older man"],
    ("female", "old"): ["old woman", "elderly woman", "older lady"],
}
GENERIC_PERSON = ["person", "pedestrian"]
DISTRACTORS = [  # (words, tags); the noun phrases inside are found by the NP rule over the tags
    ("walking along the street", "VBG IN DT NN"), ("walking down the sidewalk", "VBG RP DT NN"),
    ("crossing the road", "VBG DT NN"), ("standing near a wall", "VBG IN DT NN"),
    ("looking at the phone", "VBG IN DT NN"), ("waiting at the crosswalk", "VBG IN DT NN"),
    ("walking toward the camera", "VBG IN DT NN"), ("walking away from the camera",
                                                      "VBG RB IN DT NN"),
    ("standing in the shade", "VBG IN DT NN"), ("heading to work", "VBG TO NN"),
]
TAGS = {  # closed-class words of the captions
    "a": "DT", "the": "DT", "this": "DT", "an": "DT", "he": "PRP", "she": "PRP", "his": "PRP$",
    "her": "PRP$", "and": "CC", "with": "IN", "in": "IN", "on": "IN", "of": "IN", "over": "IN",
    "across": "IN", "is": "VBZ", "wears": "VBZ", "has": "VBZ", "carries": "VBZ", "wearing": "VBG",
    "carrying": "VBG", "holding": "VBG", "dressed": "VBN", "also": "RB", ",": ",", ".": ".",
    "pair": "NN", "back": "NN", "hand": "NN", "shoulder": "NN", "body": "NN", "left": "JJ",
    "right": "JJ", "logo": "NN", "sleeves": "NNS", "hair": "NN",
}


# --- identities ----------------------------------------------------------------------------------
def _choice(rng, options):
    if isinstance(options, dict):
        keys = list(options)
        p = np.array([options[k] for k in keys], float)
        return keys[rng.choice(len(keys), p=p / p.sum())]
    return options[rng.integers(len(options))]


def _shade(table, name, rng) -> list[float]:
    """A concrete RGB shade of colour ``name`` plus where its value sits in the range (0..1)."""
    (h0, h1), (s0, s1), (v0, v1), _ = table[name]
    h, s, v = rng.uniform(h0, h1), rng.uniform(s0, s1), rng.uniform(v0, v1)
    r, g, b = colorsys.hsv_to_rgb((h % 360) / 360, s, v)
    return [round(r, 4), round(g, 4), round(b, 4), round((v - v0) / (v1 - v0 + 1e-9), 3)]


def _other_colour(rng, probs, avoid):
    return _choice(rng, {k: p for k, p in probs.items() if k not in avoid})


def sample_identity(rng) -> dict:
    """Attributes of one person (names, not words; the words vary per caption)."""
    gender = "female" if rng.random() < 0.45 else "male"
    age = _choice(rng, {"young": .2, "adult": .65, "old": .15})
    p = {"gender": gender, "age": age, "skin": int(rng.integers(len(SKINS)))}
    p["hair_colour"] = "grey" if age == "old" and rng.random() < .7 else _choice(rng, HAIR_COLOUR_P)
    p["hair_length"] = "long" if rng.random() < (.7 if gender == "female" else .08) else "short"
    p["hat"] = _choice(rng, {"none": .75, "cap": .15, "beanie": .10})
    p["hat_colour"] = _choice(rng, BAG_COLOUR_P)
    p["glasses"] = _choice(rng, {"none": .8, "glasses": .13, "sunglasses": .07})
    upper_p = {"t-shirt": .28, "shirt": .2, "jacket": .22, "coat": .1, "sweater": .12, "dress": .08}
    if gender == "male":
        upper_p.pop("dress")
    p["upper"] = _choice(rng, upper_p)
    p["upper_colour"] = _choice(rng, UPPER_COLOUR_P)
    p["upper_colour2"] = _other_colour(rng, UPPER_COLOUR_P, {p["upper_colour"]})
    p["pattern"] = _choice(rng, {"plain": .6, "striped": .15, "checked": .1, "logo": .15})
    p["sleeve"] = ("short" if rng.random() < .85 else "long") if p["upper"] == "t-shirt" else (
        "long" if p["upper"] in ("jacket", "coat", "sweater") or rng.random() < .6 else "short")
    lower_p = {"pants": .42, "jeans": .3, "shorts": .13, "skirt": .1, "leggings": .05}
    if gender == "male":
        lower_p.pop("skirt"), lower_p.pop("leggings")
    p["lower"] = "none" if p["upper"] == "dress" else _choice(rng, lower_p)
    p["lower_colour"] = (_choice(rng, {"blue": .5, "navy": .2, "black": .2, "grey": .1})
                         if p["lower"] == "jeans" else _choice(rng, LOWER_COLOUR_P))
    p["shoes"] = _choice(rng, {"shoes": .45, "sneakers": .4, "boots": .15})
    p["shoes_colour"] = _choice(rng, SHOE_COLOUR_P)
    p["bag"] = _choice(rng, {"none": .35, "backpack": .3, "handbag": .18, "shoulder": .17})
    p["bag_colour"] = _choice(rng, BAG_COLOUR_P)
    p["held"] = _choice(rng, {"none": .7, "umbrella": .08, "phone": .12, "bottle": .05, "cup": .05})
    p["held_colour"] = _choice(rng, BAG_COLOUR_P)
    _resample_shades(p, rng)
    return p


def _resample_shades(p: dict, rng) -> None:
    p["shades"] = {
        "skin": _shade({"s": (*SKINS[p["skin"]], [])}, "s", rng),
        "hair": _shade(HAIR_COLOURS, p["hair_colour"], rng),
        **{k: _shade(COLOURS, p[f"{k}_colour"], rng)
           for k in ("hat", "upper", "lower", "shoes", "bag", "held")},
        "upper2": _shade(COLOURS, p["upper_colour2"], rng),
    }


# small attributes are the likeliest to differ inside a family (they are what separates siblings)
MUTATIONS = {"shoes_colour": 3, "bag": 3, "hat": 2, "glasses": 2, "held": 2, "hair_colour": 1.5,
             "pattern": 2, "sleeve": 1, "lower_colour": 1.5, "upper_colour": 1, "lower": 1,
             "upper": .7}


def mutate(p: dict, rng, n: int) -> dict:
    """A family member: ``p`` with ``n`` attributes changed and every shade drawn afresh."""
    q = json.loads(json.dumps(p))
    for key in rng.choice(list(MUTATIONS), size=n, replace=False,
                          p=np.array(list(MUTATIONS.values())) / sum(MUTATIONS.values())):
        if key == "shoes_colour":
            q[key] = _other_colour(rng, SHOE_COLOUR_P, {q[key]})
        elif key == "lower_colour":
            q[key] = _other_colour(rng, LOWER_COLOUR_P, {q[key]})
        elif key == "upper_colour":
            q[key] = _other_colour(rng, UPPER_COLOUR_P, {q[key], q["upper_colour2"]})
        elif key == "hair_colour":
            q[key] = _other_colour(rng, HAIR_COLOUR_P, {q[key]})
        elif key in ("bag", "hat", "held"):
            options = {"bag": ["none", "backpack", "handbag", "shoulder"],
                       "hat": ["none", "cap", "beanie"],
                       "held": ["none", "umbrella", "phone", "bottle", "cup"]}[key]
            if q[key] != "none" and rng.random() < .5:
                q[f"{key}_colour"] = _other_colour(rng, BAG_COLOUR_P, {q[f"{key}_colour"]})
            else:
                q[key] = _choice(rng, [o for o in options if o != q[key]])
        elif key == "glasses":
            q[key] = _choice(rng, [o for o in ("none", "glasses", "sunglasses") if o != q[key]])
        elif key == "pattern":
            q[key] = _choice(rng, [o for o in ("plain", "striped", "checked", "logo")
                                   if o != q[key]])
        elif key == "sleeve":
            q[key] = "short" if q[key] == "long" else "long"
        elif key == "lower" and q["lower"] != "none":
            q[key] = _choice(rng, [o for o in ("pants", "jeans", "shorts")
                                   if o != q[key]])
        elif key == "upper" and q["upper"] != "dress":
            q[key] = _choice(rng, [o for o in ("t-shirt", "shirt", "jacket", "sweater")
                                   if o != q[key]])
    _resample_shades(q, rng)
    return q


def identity_key(attrs: dict) -> str:
    """What makes two identities the same person: every attribute but the per-image shades."""
    return json.dumps({k: v for k, v in attrs.items() if k != "shades"}, sort_keys=True)


@lru_cache(maxsize=1)
def benchmark_identity_keys() -> frozenset:
    """Identity keys of every benchmark render (``BENCHMARK_SEEDS``), ~8 s."""
    return frozenset(identity_key(p["attrs"]) for profile, seeds in BENCHMARK_SEEDS.items()
                     for seed in seeds for p in build_identities(profile, seed))


def build_identities(profile: str, seed: int) -> list[dict]:
    """All identities with their 1-based id, split and family, in id order.

    A corpus profile (``corpus=True``) draws from its own stream, numbers its ids from
    ``CORPUS_ID_BASE + 1`` and leaves out any identity a benchmark render holds (same attributes),
    so no identity, family or image is shared with smoke, quick or large."""
    spec = PROFILES[profile]
    corpus = spec.get("corpus", False)
    rng = np.random.default_rng([seed, 0, spec.get("stream", CORPUS_STREAM)] if corpus else [seed, 0])
    family_size = spec.get("family", (3, 6))  # people per family (min, max)
    taken = benchmark_identity_keys() if corpus else frozenset()
    people, family = [], 0
    for split, n in zip(("train", "val", "test"), spec["ids"]):
        members: list[dict] = []
        while len(members) < n:
            base = sample_identity(rng)
            size = int(rng.integers(family_size[0], family_size[1] + 1))
            for k in range(min(size, n - len(members))):
                attrs = base if k == 0 else mutate(base, rng, int(rng.integers(1, 3)))
                n_images = int(rng.integers(spec["images"][0], spec["images"][1] + 1))
                if identity_key(attrs) not in taken:
                    members.append({"split": split, "attrs": attrs, "n_images": n_images,
                                    "family": family + (CORPUS_ID_BASE if corpus else 0)})
            family += 1
        people += members
    for i, person in enumerate(people):
        person["id"] = i + 1 + (CORPUS_ID_BASE if corpus else 0)
    return people


# --- rendering -----------------------------------------------------------------------------------
class _Shape:
    """A bool mask inside a pixel window [y0:y1, x0:x1] of the canvas (shapes are small)."""

    def __init__(self, canvas, box, mask):
        self.canvas, self.box, self.mask = canvas, box, mask

    @property
    def uv(self):
        return self.canvas.uv(self.box)

    def where(self, keep) -> "_Shape":
        """The part of the shape where ``keep(u, v)`` holds."""
        return _Shape(self.canvas, self.box, self.mask & keep(*self.uv))

    def __or__(self, other: "_Shape") -> "_Shape":
        (a0, a1, b0, b1), (c0, c1, d0, d1) = self.box, other.box
        box = (min(a0, c0), max(a1, c1), min(b0, d0), max(b1, d1))
        mask = np.zeros((box[1] - box[0], box[3] - box[2]), bool)
        for s in (self, other):
            y0, y1, x0, x1 = s.box
            mask[y0 - box[0]:y1 - box[0], x0 - box[2]:x1 - box[2]] |= s.mask
        return _Shape(self.canvas, box, mask)


class _Canvas:
    """An RGB float image and a region-label map, painted in body coordinates (u, v).

    v runs from the top of the head (0) to the soles (1); u is horizontal, in units of body height
    times an aspect factor, 0 on the body axis. Framing jitter is just a different (u, v) mapping.
    """

    def __init__(self, rng, height_frac, top, cx, aspect):
        h, w = SIZE
        self.sy, self.sx, self.top, self.cx = height_frac * h, height_frac * h * aspect, top, cx
        self.rgb = np.zeros((h, w, 3), np.float32)
        self.label = np.zeros((h, w), np.uint8)
        coarse = Image.fromarray(rng.normal(size=(h // 16, w // 16)).astype(np.float32))
        smooth = np.asarray(coarse.resize((w, h), Image.BILINEAR))
        self.texture = smooth * .06 + rng.standard_normal((h, w), dtype=np.float32) * .025

    def window(self, u0, u1, v0, v1):
        h, w = SIZE
        y0 = int(np.clip(np.floor(self.top + v0 * self.sy), 0, h))
        y1 = int(np.clip(np.ceil(self.top + v1 * self.sy) + 1, 0, h))
        x0 = int(np.clip(np.floor(self.cx + u0 * self.sx), 0, w))
        x1 = int(np.clip(np.ceil(self.cx + u1 * self.sx) + 1, 0, w))
        return y0, max(y1, y0), x0, max(x1, x0)

    def uv(self, box):
        y0, y1, x0, x1 = box
        u = ((np.arange(x0, x1, dtype=np.float32) - self.cx) / self.sx)[None, :]
        v = ((np.arange(y0, y1, dtype=np.float32) - self.top) / self.sy)[:, None]
        return u, v

    def shape(self, bounds, fn) -> _Shape:
        box = self.window(*bounds)
        u, v = self.uv(box)
        mask = np.broadcast_to(fn(u, v), (box[1] - box[0], box[3] - box[2]))
        return _Shape(self, box, np.array(mask, bool))

    def ellipse(self, cu, cv, ru, rv):
        return self.shape((cu - ru, cu + ru, cv - rv, cv + rv),
                          lambda u, v: ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1)

    def rect(self, u0, u1, v0, v1):
        return self.shape((u0, u1, v0, v1),
                          lambda u, v: (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1))

    def trapezoid(self, v0, v1, half0, half1, cu=0.0):
        half = max(half0, half1)

        def fn(u, v):
            t = np.clip((v - v0) / (v1 - v0), 0, 1)
            return (v >= v0) & (v <= v1) & (np.abs(u - cu) <= half0 + (half1 - half0) * t)
        return self.shape((cu - half, cu + half, v0, v1), fn)

    def capsule(self, a, b, r):
        (u0, v0), (u1, v1) = a, b
        du, dv = u1 - u0, v1 - v0

        def fn(u, v):
            t = np.clip(((u - u0) * du + (v - v0) * dv) / (du * du + dv * dv), 0, 1)
            return (u - u0 - t * du) ** 2 + (v - v0 - t * dv) ** 2 <= r * r
        return self.shape((min(u0, u1) - r, max(u0, u1) + r, min(v0, v1) - r, max(v0, v1) + r), fn)

    def paint(self, shape: _Shape, colour, region: str | None, shading=True):
        y0, y1, x0, x1 = shape.box
        mask = shape.mask
        colour = np.asarray(colour[:3], np.float32)
        rgb = self.rgb[y0:y1, x0:x1]
        if shading:  # garments are round and textured: the caption's one word hides this detail
            u, _ = shape.uv
            u = np.broadcast_to(u, mask.shape)[mask]
            shade = 1 + self.texture[y0:y1, x0:x1][mask] - .18 * np.clip((u / .1) ** 2, 0, 1)
            rgb[mask] = colour * shade[:, None]
        else:
            rgb[mask] = colour
        self.label[y0:y1, x0:x1][mask] = REGION_CODES[region] if region else 0


def _jitter(shade, rng, amount=.04):
    return np.clip(np.asarray(shade[:3]) * rng.uniform(1 - amount, 1 + amount, 3), 0, 1)


def _palette_rgb(rng, name=None):
    return np.array(_shade(COLOURS, name or _choice(rng, list(COLOURS)), rng)[:3], np.float32)


def _background(c: _Canvas, rng, person_colours):
    h, w = SIZE
    top, bottom = _palette_rgb(rng) * .6 + .2, _palette_rgb(rng) * .6 + .2
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    c.rgb[:] = top * (1 - t) + bottom * t
    ground = int(h * rng.uniform(.62, .8))
    c.rgb[ground:] = _palette_rgb(rng, _choice(rng, ["grey", "beige", "brown", "black"])) * .8 + .1
    for _ in range(int(rng.integers(1, 4))):  # poles, doors, shop fronts
        x0 = int(rng.integers(-10, w)); x1 = x0 + int(rng.integers(4, 40))
        c.rgb[:ground, max(x0, 0):max(x1, 0)] = _palette_rgb(rng)
    for _ in range(int(rng.integers(0, 4))):  # kerbs, road markings
        y0 = int(rng.integers(ground, h)); c.rgb[y0:y0 + int(rng.integers(2, 8))] = _palette_rgb(rng)
    for _ in range(int(rng.integers(2, 7))):  # blobs, sometimes in a garment's colour
        colour = (person_colours[rng.integers(len(person_colours))][:3] if rng.random() < .3
                  else _palette_rgb(rng))
        cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, 60), rng.uniform(6, 40)
        y0, y1 = int(max(cy - ry, 0)), int(min(cy + ry + 1, h))
        x0, x1 = int(max(cx - rx, 0)), int(min(cx + rx + 1, w))
        yy, xx = np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :]
        c.rgb[y0:y1, x0:x1][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = colour
    c.rgb += c.texture[..., None] * .5


def _background_web(c: _Canvas, rng, person_colours):
    """A park or a plain backdrop instead of the street: sky and grass or one wall colour, a few
    soft bushes, little clutter (the shifted corpus's look)."""
    h, w = SIZE
    if rng.random() < .6:  # park: sky, a horizon, grass or gravel, bushes
        sky = np.array(colorsys.hsv_to_rgb(rng.uniform(.5, .64), rng.uniform(.08, .5), rng.uniform(.7, 1)),
                       np.float32)
        horizon = int(h * rng.uniform(.3, .7))
        t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
        c.rgb[:horizon] = sky * (1 - .3 * t)
        ground = np.array(colorsys.hsv_to_rgb(rng.uniform(.2, .38), rng.uniform(.3, .7), rng.uniform(.3, .7))
                          if rng.random() < .7 else _palette_rgb(rng, "beige"), np.float32)
        c.rgb[horizon:] = ground
        for _ in range(int(rng.integers(1, 5))):
            green = np.array(colorsys.hsv_to_rgb(rng.uniform(.22, .4), rng.uniform(.4, .8), rng.uniform(.2, .55)),
                             np.float32)
            cy, cx = horizon + rng.uniform(-40, 10), rng.uniform(0, w)
            ry, rx = rng.uniform(15, 50), rng.uniform(15, 50)
            yy, xx = np.arange(h)[:, None], np.arange(w)[None, :]
            c.rgb[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = green
    else:  # a plain wall, lit from one side
        wall = _palette_rgb(rng) * .5 + .4
        ramp = np.linspace(rng.uniform(.8, 1), rng.uniform(.8, 1), w, dtype=np.float32)[None, :, None]
        c.rgb[:] = wall * ramp
    if rng.random() < .15:  # now and then something in a garment's colour
        colour = person_colours[rng.integers(len(person_colours))][:3]
        x0 = int(rng.integers(0, w - 8))
        c.rgb[:, x0:x0 + int(rng.integers(4, 20))] = colour
    c.rgb += c.texture[..., None] * .3


@dataclass(frozen=True)
class Look:
    """Rendering statistics. ``LOOKS["benchmark"]`` is what smoke / quick / large render (changing
    it changes the benchmark); a corpus profile may name another (``look=``)."""
    height: tuple = (.80, .94)  # person height, fraction of the image height
    top: tuple = (.02, -.01)  # top of the head in [lo, 1 - height + hi] of the image height
    shift_x: float = 9  # horizontal jitter of the body axis, pixels
    back: float = .4  # probability of a back view
    background: str = "street"  # street | web (park or plain wall)
    contrast: tuple = (.8, 1.15)
    gain: tuple = (.75, 1.2)
    cast: tuple = (.92, 1.08)  # per-channel gain: a colour cast
    blur: float = .3
    grey: float = 0.0  # probability of a greyscale photo
    downscale: tuple | None = None  # (probability, min, max factor): taken small, shown enlarged
    jpeg: tuple = (90, 90)  # JPEG quality (min, max)


LOOKS = {
    "benchmark": Look(),
    # web photos: closer and looser framing (head or feet cut off), frontal, parks and plain walls,
    # stronger exposure and colour casts, some greyscale, low resolution and heavy JPEG. (A first
    # version with casts of 0.8-1.2, 10 % greyscale, 60 % at 1/2-1/5 resolution and 12 % wrong colours
    # was too noisy to learn from: the member's ITC stayed at chance for 1,400 steps.)
    "web": Look(height=(.6, 1.15), top=(-.12, .04), shift_x=20, back=.2, background="web",
                contrast=(.7, 1.25), gain=(.7, 1.3), cast=(.9, 1.1), blur=.3, grey=.05,
                downscale=(.5, 1.5, 3.0), jpeg=(40, 85)),
}


def render_image(attrs: dict, rng, look: Look = LOOKS["benchmark"]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one view of a person: RGB uint8 [H, W, 3], region labels [H, W], per-image facts."""
    p, s = attrs, attrs["shades"]
    young = p["age"] == "young"
    height = rng.uniform(*look.height) * (.86 if young else 1.0)
    top = rng.uniform(look.top[0], 1 - height + look.top[1]) * SIZE[0]
    c = _Canvas(rng, height, top, SIZE[1] / 2 + rng.uniform(-look.shift_x, look.shift_x),
                rng.uniform(.68, .82) * (1.05 if p["gender"] == "male" else .95))
    view = "back" if rng.random() < look.back else "front"
    front = view == "front"
    bag_side = 1 if rng.random() < .5 else -1  # person's own left (+1) or right (-1) hand
    held_side = -bag_side if p["bag"] in ("handbag", "shoulder") else (1 if rng.random() < .5 else -1)
    on_image = lambda side: side if front else -side  # the person's left is on the image right
    shades = {k: _jitter(v, rng) for k, v in s.items()}
    (_background if look.background == "street" else _background_web)(c, rng, list(shades.values()))

    arm_v = rng.uniform(.44, .49)
    hands = {side: (on_image(side) * rng.uniform(.135, .155), arm_v + rng.uniform(-.02, .02))
             for side in (1, -1)}
    if p["held"] == "phone":  # the phone hand is raised in front of the chest
        hands[held_side] = (on_image(held_side) * .05, .31)

    # behind the body: a backpack seen from the front shows only its straps (drawn later)
    skin, hair = shades["skin"], shades["hair"]
    if p["hair_length"] == "long" and front:
        c.paint(c.rect(-.062, .062, .05, .25), hair, "head")

    # legs (a walking stride spreads the feet) and lower garment
    stride = rng.uniform(-.01, .035)
    foot = {side: side * (.05 + stride) for side in (1, -1)}
    knee = {side: side * (.047 + stride * .45) for side in (1, -1)}
    for side in (1, -1):
        c.paint(c.capsule((side * .045, .5), (foot[side], .93), .034), skin, "legs")
    lower = shades["lower"]
    if p["lower"] in ("pants", "jeans", "leggings"):
        r = .028 if p["lower"] == "leggings" else .038
        for side in (1, -1):
            c.paint(c.capsule((side * .045, .5), (foot[side], .925), r), lower, "lower")
        c.paint(c.rect(-.09, .09, .46, .56), lower, "lower")
        if p["lower"] == "jeans":  # seams
            for side in (1, -1):
                c.paint(c.capsule((side * .047, .57), (foot[side], .91), .003), lower * .7, "lower",
                        shading=False)
    elif p["lower"] == "shorts":
        c.paint(c.rect(-.09, .09, .46, .56), lower, "lower")
        for side in (1, -1):
            c.paint(c.capsule((side * .045, .5), (knee[side], .64), .042), lower, "lower")
    elif p["lower"] == "skirt":
        c.paint(c.trapezoid(.46, .68, .085, .125), lower, "lower")

    # shoes
    shoe = shades["shoes"]
    for side in (1, -1):
        if p["shoes"] == "boots":
            c.paint(c.rect(foot[side] - .034, foot[side] + .034, .87, .965), shoe, "shoes")
        c.paint(c.ellipse(foot[side] + side * .005, .965, .042, .028), shoe, "shoes")
        if p["shoes"] == "sneakers":
            sole = c.ellipse(foot[side] + side * .005, .965, .042, .028).where(lambda u, v: v > .978)
            c.paint(sole, np.ones(3) * .92, "shoes", shading=False)

    # upper garment: torso (longer for coats and dresses) and arms
    upper, upper2 = shades["upper"], shades["upper2"]
    torso_end = {"coat": .66, "dress": .72}.get(p["upper"], .5)
    torso = c.trapezoid(.15, .47, .11, .095) | c.trapezoid(.46, torso_end, .095,
                                                            .14 if p["upper"] == "dress" else .105)
    c.paint(torso, upper, "upper")
    if p["pattern"] == "striped":
        period = rng.uniform(.018, .03)
        c.paint(torso.where(lambda u, v: (v // period) % 2 == 1), upper2, "upper")
    elif p["pattern"] == "checked":
        period = rng.uniform(.025, .04)
        c.paint(torso.where(lambda u, v: ((v // period) + (u // period)) % 2 == 1), upper2,
                "upper")
    elif p["pattern"] == "logo" and front:
        c.paint(c.ellipse(.0, .26, .035, .035), upper2, "upper", shading=False)
    if p["upper"] == "jacket" and front:  # open zip line
        c.paint(c.rect(-.006, .006, .16, .5), upper * .6, "upper", shading=False)
    if p["upper"] == "shirt" and front:
        c.paint(c.trapezoid(.15, .19, .03, .0), np.ones(3) * .9 if p["upper_colour"] != "white"
                else upper * .8, "upper", shading=False)
    if p["upper"] == "sweater":
        c.paint(c.rect(-.1, .1, .46, .5), upper * .8, "upper", shading=False)
    for side in (1, -1):
        shoulder = (on_image(side) * .115, .18)
        hand = hands[side]
        sleeve_end = .27 if p["sleeve"] == "short" else .95
        elbow = (shoulder[0] + (hand[0] - shoulder[0]) * sleeve_end,
                 shoulder[1] + (hand[1] - shoulder[1]) * sleeve_end)
        c.paint(c.capsule(shoulder, hand, .027), skin, "arms")
        c.paint(c.capsule(shoulder, elbow, .031), upper, "upper")
        c.paint(c.ellipse(hand[0], hand[1] + .012, .02, .022), skin, "arms")

    # head, hair, hat, glasses
    c.paint(c.rect(-.02, .02, .11, .16), skin, "head")
    head = c.ellipse(0, .068, .05, .066)
    c.paint(head, skin, "head")
    if front:
        fringe = .03 + (.02 if p["hair_length"] == "long" else 0)
        c.paint(head.where(lambda u, v: v < fringe), hair, "head")
        c.paint(c.ellipse(0, .04, .055, .045).where(lambda u, v: v < .045), hair, "head")
    else:
        c.paint(c.ellipse(0, .06, .055, .066).where(lambda u, v: v < .115), hair, "head")
        if p["hair_length"] == "long":
            c.paint(c.rect(-.06, .06, .05, .27), hair, "head")
    if p["glasses"] != "none" and front:
        dark = np.ones(3) * (.05 if p["glasses"] == "sunglasses" else .15)
        thick = .016 if p["glasses"] == "sunglasses" else .008
        c.paint(c.rect(-.043, .043, .062, .062 + thick), dark, "head", shading=False)
    if p["hat"] != "none":
        hat = shades["hat"]
        if p["hat"] == "cap":
            c.paint(c.ellipse(0, .035, .057, .04).where(lambda u, v: v < .05), hat, "hat")
            if front:
                c.paint(c.rect(-.06, .06, .042, .052), hat * .8, "hat", shading=False)
        else:
            beanie = c.ellipse(0, .048, .058, .052).where(lambda u, v: v < .058)
            c.paint(beanie, hat, "hat")
            c.paint(beanie.where(lambda u, v: (v // .008) % 2 == 1), hat * .85, "hat",
                    shading=False)

    # bags and held objects move with the hands, the shoulder or the back
    bag = shades["bag"]
    if p["bag"] == "backpack":
        if front:
            for side in (1, -1):
                c.paint(c.rect(side * .07 - .011, side * .07 + .011, .15, .34), bag, "bag")
        else:
            c.paint(c.rect(-.085, .085, .19 + rng.uniform(-.01, .01), .43), bag, "bag")
    elif p["bag"] == "handbag":
        hu, hv = hands[bag_side]
        c.paint(c.capsule((hu - .02, hv + .01), (hu + .02, hv + .01), .006), bag * .7, "bag")
        c.paint(c.rect(hu - .035, hu + .035, hv + .02, hv + .09), bag, "bag")
    elif p["bag"] == "shoulder":
        x = on_image(bag_side)
        c.paint(c.capsule((-x * .09, .16), (x * .1, .44), .008), bag * .8, "bag")
        c.paint(c.rect(x * .12 - .04, x * .12 + .04, .42 + rng.uniform(-.02, .02), .52), bag,
                "bag")
    held = shades["held"]
    hu, hv = hands[held_side]
    if p["held"] == "umbrella":
        c.paint(c.capsule((hu, hv), (hu + np.sign(hu) * .03, .95), .007), np.ones(3) * .15, "held")
        c.paint(c.capsule((hu + np.sign(hu) * .005, hv + .1), (hu + np.sign(hu) * .025, .85), .018),
                held, "held")
    elif p["held"] == "phone":
        if front:
            c.paint(c.rect(hu - .012, hu + .012, hv - .04, hv), np.ones(3) * .08, "held",
                    shading=False)
    elif p["held"] == "bottle":
        c.paint(c.rect(hu - .013, hu + .013, hv - .01, hv + .07), held, "held")
    elif p["held"] == "cup":
        c.paint(c.rect(hu - .016, hu + .016, hv - .01, hv + .035), np.ones(3) * .9, "held")

    if rng.random() < .08:  # an occluder (a bin, a car, another pedestrian) in front of the legs
        h, w = SIZE
        y0 = int(rng.uniform(.55, .85) * h); x0 = int(rng.uniform(-.3, .6) * w)
        region = (slice(y0, h), slice(max(x0, 0), max(x0 + int(rng.uniform(.3, .6) * w), 0)))
        c.rgb[region] = _palette_rgb(rng) * (1 + c.texture[region][..., None])
        c.label[region] = 0

    # photometric jitter: exposure, contrast, colour cast, sensor noise, blur
    contrast = rng.uniform(*look.contrast)
    gain = (rng.uniform(*look.gain) * rng.uniform(*look.cast, 3) * contrast * 255).astype(np.float32)
    rgb = c.rgb * gain + np.float32((.5 - .5 * contrast) * 255)
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(.015 * 255)
    image = Image.fromarray(np.clip(rgb, 0, 255, out=rgb).astype(np.uint8))
    if rng.random() < look.blur:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(.5, 1.3)))
    if look.grey and rng.random() < look.grey:
        image = image.convert("L").convert("RGB")
    if look.downscale and rng.random() < look.downscale[0]:
        f = rng.uniform(*look.downscale[1:])
        small = image.resize((max(int(SIZE[1] / f), 4), max(int(SIZE[0] / f), 4)), Image.BILINEAR)
        image = small.resize((SIZE[1], SIZE[0]), Image.BILINEAR)
    facts = {"view": view, "bag_side": "left" if bag_side > 0 else "right",
             "held_side": "left" if held_side > 0 else "right"}
    return np.asarray(image), c.label, facts


def region_boxes(label: np.ndarray) -> dict[str, list[int]]:
    """Box (x0, y0, x1, y1), x1/y1 exclusive, of each visible region and of the whole person."""
    boxes = {}
    masks = {name: label == REGION_CODES[name] for name in REGIONS}
    masks["person"] = label > 0
    for name, mask in masks.items():
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows):
            boxes[name] = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
    return boxes


# --- captions ------------------------------------------------------------------------------------
@dataclass
class _Caption:
    """A caption under construction: words with gold tags, attribute labels and noun phrases."""
    words: list = field(default_factory=list)  # [word, tag, attribute or None, region or None]
    phrases: list = field(default_factory=list)  # (first word, end word) of each noun phrase

    def add(self, text: str, tag: str | None = None, attr=None, region=None):
        for w in text.split():
            self.words.append([w, tag or TAGS[w], attr, region])

    def phrase(self, parts):
        """Append a noun phrase; ``parts`` are (text, tag, attr, region)."""
        start = len(self.words)
        parts = list(parts)
        if len(parts) > 1 and parts[0][0] in ("a", "an"):  # the article agrees with the next word
            parts[0] = ("an" if parts[1][0][0] in "aeiou" else "a", *parts[0][1:])
        for part in parts:
            self.add(*part)
        self.phrases.append((start, len(self.words)))

    def extend(self, other: "_Caption"):
        offset = len(self.words)
        self.words += other.words
        self.phrases += [(a + offset, b + offset) for a, b in other.phrases]


def _noun(text: str):
    """Tags of a (possibly multi-word) noun: adjectives JJ, noun modifiers NN, the head NN/NNS."""
    words = text.split()
    tags = ["NN"] * (len(words) - 1) + ["NNS" if words[-1] in PLURAL_NOUNS else "NN"]
    if words[0] in ("long", "young", "old", "elderly", "older", "knit"):
        tags[0] = "JJ"
    return list(zip(words, tags))


def _colour_parts(name, shade, rng, attr, region, table=COLOURS, single=False):
    words = [w for w in table[name][3] if not single or " " not in w]
    word = _choice(rng, words)
    parts = []
    rel = shade[3]
    if not single and name not in ("black", "white", "navy") and rng.random() < .35:
        if rel < .25:
            parts.append(("dark", "JJ", attr, region))
        elif rel > .75:
            parts.append(("light", "JJ", attr, region))
    return parts + [(w, "JJ", attr, region) for w in word.split()]


def _det(rng, noun_words, pron):
    if noun_words[-1][1] == "NNS":
        return []
    r = rng.random()
    if r < .1:
        return [(pron[1], "PRP$", None, None)]
    if r < .85:
        return [("a", "DT", None, None)]
    return []


def _upper_phrases(p, facts, rng, pron) -> _Caption:
    cap = _Caption()
    words = [w for w in UPPER_WORDS[p["upper"]] if p["gender"] == "female" or w != "blouse"]
    nouns = _noun(_choice(rng, words))
    mods = []
    coloured = rng.random() < .92
    # "red and white striped shirt": the NP rule allows one adjective before "and", nothing more
    two = coloured and p["pattern"] in ("striped", "checked") and rng.random() < .5
    sleeve = p["upper"] != "dress" and rng.random() < .25
    if sleeve and not two and rng.random() < .5:
        mods.append((f"{p['sleeve']}-sleeved", "JJ", "upper_sleeve", "upper"))
        sleeve = False
    if coloured:
        colour = _colour_parts(p["upper_colour"], p["shades"]["upper"], rng, "upper_colour",
                               "upper", single=two)
        mods += colour
        if two:
            mods += [("and", "CC", None, None)] + _colour_parts(
                p["upper_colour2"], p["shades"]["upper2"], rng, "upper_colour", "upper", single=True)
    if p["pattern"] in ("striped", "checked") and rng.random() < .6:
        word = _choice(rng, ["striped"] if p["pattern"] == "striped" else ["checked", "plaid"])
        mods.append((word, "JJ", "upper_pattern", "upper"))
    nouns = [(w, t, "upper_type", "upper") for w, t in nouns]
    cap.phrase(_det(rng, nouns, pron) + mods + nouns)
    if p["pattern"] == "logo" and facts["view"] == "front" and rng.random() < .5:
        cap.add("with")
        logo = [("a", "DT", None, None)]
        if rng.random() < .5:
            logo += _colour_parts(p["upper_colour2"], p["shades"]["upper2"], rng, "upper_pattern",
                                  "upper", single=True)
        cap.phrase(logo + [("logo", "NN", "upper_pattern", "upper")])
    if sleeve:
        cap.add("with")
        cap.phrase([(p["sleeve"], "JJ", "upper_sleeve", "upper"),
                    ("sleeves", "NNS", "upper_sleeve", "upper")])
    return cap


def _garment_phrase(rng, pron, words, colour_parts, attr_type, region) -> _Caption:
    cap = _Caption()
    nouns = [(w, t, attr_type, region) for w, t in _noun(_choice(rng, words))]
    if nouns[-1][1] == "NNS" and rng.random() < .15:
        cap.phrase([("a", "DT", None, None), ("pair", "NN", None, None)])
        cap.add("of")
    cap.phrase(_det(rng, nouns, pron) + colour_parts + nouns)
    return cap


def _location(cap: _Caption, rng, pron, words: str, attr, region):
    """A prepositional location such as 'in her left hand' (the words are the gold region)."""
    prep, *rest = words.split()
    cap.add(prep, "IN", attr, region)
    cap.phrase([(pron[1], "PRP$", attr, region)] +
               [(w, TAGS[w], attr, region) for w in rest])


def _mention(p, facts, key, rng, pron) -> _Caption:
    s = p["shades"]
    colour = lambda name, shade, attr, region, table=COLOURS: (
        _colour_parts(name, shade, rng, attr, region, table) if rng.random() < .9 else [])
    if key == "upper":
        return _upper_phrases(p, facts, rng, pron)
    if key == "lower":
        return _garment_phrase(rng, pron, LOWER_WORDS[p["lower"]], colour(
            p["lower_colour"], s["lower"], "lower_colour", "lower"), "lower_type", "lower")
    if key == "shoes":
        return _garment_phrase(rng, pron, SHOE_WORDS[p["shoes"]], colour(
            p["shoes_colour"], s["shoes"], "shoes_colour", "shoes"), "shoes_type", "shoes")
    if key == "hat":
        return _garment_phrase(rng, pron, HAT_WORDS[p["hat"]], colour(
            p["hat_colour"], s["hat"], "hat_colour", "hat"), "hat_type", "hat")
    if key == "glasses":
        return _garment_phrase(rng, pron, GLASSES_WORDS[p["glasses"]], [], "glasses", "head")
    if key == "hair":
        cap = _Caption()
        mods = []
        if rng.random() < .7:
            mods.append((p["hair_length"], "JJ", "hair_length", "head"))
        if rng.random() < .8 or not mods:
            mods += _colour_parts(p["hair_colour"], s["hair"], rng, "hair_colour", "head",
                                  HAIR_COLOURS)
        cap.phrase(mods + [("hair", "NN", "hair", "head")])
        return cap
    if key == "bag":
        cap = _garment_phrase(rng, pron, BAG_WORDS[p["bag"]], colour(
            p["bag_colour"], s["bag"], "bag_colour", "bag"), "bag_type", "bag")
        if rng.random() < .4:
            where = {"backpack": "on back",
                     "handbag": f"in {facts['bag_side']} hand",
                     "shoulder": _choice(rng, ["over shoulder", "across body"])}[p["bag"]]
            _location(cap, rng, pron, where, "bag_position", "bag")
        return cap
    if key == "held":
        cap = _garment_phrase(rng, pron, HELD_WORDS[p["held"]], colour(
            p["held_colour"], s["held"], "held_colour", "held") if p["held"] in
            ("umbrella", "bottle") else [], "held_type", "held")
        if rng.random() < .3:
            _location(cap, rng, pron, f"in {facts['held_side']} hand", "held_position", "held")
        return cap
    raise KeyError(key)


def _join(cap: _Caption, items: list[_Caption]):
    for i, item in enumerate(items):
        if i and i == len(items) - 1:
            cap.add("and")
        elif i:
            cap.add(",")
        cap.extend(item)


def _subject(p, rng, det_words=("a", "the", "this")) -> _Caption:
    cap = _Caption()
    det = _choice(rng, list(det_words))
    if rng.random() < .12:
        noun = _choice(rng, GENERIC_PERSON)
        cap.phrase([(det, "DT", None, None), (noun, "NN", "gender", "person")])
        return cap
    words = _choice(rng, PERSON_NOUNS[(p["gender"], p["age"])])
    parts = _noun(words)
    parts = [(w, t, "age" if t == "JJ" else "gender", "person") for w, t in parts]
    cap.phrase([(det, "DT", None, None)] + parts)
    return cap


def _add_distractor(cap: _Caption, rng):
    text = " ".join(w[0].lower() for w in cap.words)
    words, tags = _choice(rng, [d for d in DISTRACTORS if d[0] not in text])
    words, tags = words.split(), tags.split()
    start = len(cap.words)
    for w, t in zip(words, tags):
        cap.add(w, t)
    # the trailing determiner + noun (or bare noun) of a distractor is a noun phrase
    k = len(tags) - 1
    first = k - 1 if tags[k - 1] == "DT" else k
    cap.phrases.append((start + first, start + k + 1))


def _pick_mentions(p, rng) -> list[str]:
    """A random subset (at least three) of the attributes, salient ones the likeliest."""
    probs = {"upper": .88, "lower": .7 if p["lower"] != "none" else 0, "shoes": .45, "hair": .5,
             "hat": .55 if p["hat"] != "none" else 0,
             "glasses": .4 if p["glasses"] != "none" else 0,
             "bag": .7 if p["bag"] != "none" else 0, "held": .5 if p["held"] != "none" else 0}
    available = [k for k, q in probs.items() if q > 0]
    while True:
        chosen = [k for k in available if rng.random() < probs[k]]
        if len(chosen) >= min(3, len(available)) and ({"upper", "lower"} & set(chosen)):
            order = rng.permutation(len(chosen))
            return [chosen[i] for i in order]


def make_caption(p: dict, facts: dict, rng) -> tuple[str, dict]:
    """One free-form caption and its gold annotation (attribute spans, noun phrases, tags)."""
    pron = ("he", "his") if p["gender"] == "male" else ("she", "her")
    mentions = _pick_mentions(p, rng)
    parts = {k: _mention(p, facts, k, rng, pron) for k in mentions}
    worn = [k for k in mentions if k in ("upper", "lower", "shoes", "hat", "glasses")]
    carried = [k for k in mentions if k in ("bag", "held")]
    hair = "hair" in mentions
    cap = _subject(p, rng)
    template = int(rng.integers(4))
    if rng.random() < .15:
        cap.add(",")
        _add_distractor(cap, rng)
        cap.add(",")
    if hair and template in (0, 1):
        cap.add("with")
        cap.extend(parts["hair"])
        hair = False
    if template == 2 and hair:
        cap.add("has", "VBZ")
        cap.extend(parts["hair"])
        cap.add(".")
        cap.add(pron[0])
        hair = False
    wear = _choice(rng, ["is wearing", "wearing", "wears", "in", "dressed in"] if template != 2
                   else ["is wearing", "wears", "is dressed in"])
    for w in wear.split():
        cap.add(w)
    _join(cap, [parts[k] for k in worn])
    if hair:
        cap.add("with" if len(worn) > 1 or rng.random() < .5 else "and")
        cap.extend(parts["hair"])
    if carried:
        if template == 3 or rng.random() < .4:
            cap.add(".")
            cap.add(pron[0])
            for w in _choice(rng, ["is carrying", "is holding", "has", "carries",
                                   "is also carrying"]).split():
                cap.add(w)
        else:
            cap.add(",")
            cap.add(_choice(rng, ["carrying", "holding", "with"]))
        _join(cap, [parts[k] for k in carried])
    if rng.random() < .2:
        cap.add(".")
        cap.add(pron[0])
        cap.add("is", "VBZ")
        _add_distractor(cap, rng)
    cap.add(".")
    _typo(cap, rng, .04)
    return _render_caption(cap, capitalise=rng.random() < .7)


def _typo(cap: _Caption, rng, p: float):
    """With probability ``p`` a typo: two letters of a word swapped or one dropped."""
    if rng.random() < p:
        candidates = [i for i, w in enumerate(cap.words) if len(w[0]) > 3 and "-" not in w[0]]
        if not candidates:
            return
        i = _choice(rng, candidates)
        w = cap.words[i][0]
        j = int(rng.integers(1, len(w) - 1))
        cap.words[i][0] = w[:j] + w[j + 1] + w[j] + w[j + 2:] if rng.random() < .5 else \
            w[:j] + w[j + 1:]


# --- web-style captions (the aligned member's shifted corpus) ------------------------------------
# Alt-text and shop-tag phrasing instead of the benchmark's annotator sentences: short, 1-4 of the
# salient attributes, other templates, other words (each concept named by a benchmark word only
# with probability WEB["same_word"], else a synonym the benchmark never uses), wrong colours now
# and then, and some captions that describe nothing (a web page's alt text often does not).
WEB = dict(same_word=.25, wrong_colour=.05, no_colour=.2, typo=.08,
           forms={"tags": .3, "alt": .4, "sentence": .25, "noise": .05})
WEB_COLOURS = {"black": ["jet", "ebony", "charcoal black"], "white": ["ivory", "snow", "off-white"],
               "grey": ["charcoal", "silver", "ash"], "red": ["crimson", "scarlet", "cherry"],
               "orange": ["tangerine", "rust", "coral"], "yellow": ["mustard", "lemon", "golden"],
               "green": ["olive", "emerald", "lime"], "blue": ["azure", "cobalt", "sky"],
               "navy": ["indigo", "midnight", "ink"], "purple": ["lilac", "plum", "lavender"],
               "pink": ["rose", "fuchsia", "blush"], "brown": ["chocolate", "coffee", "mocha"],
               "beige": ["sand", "camel", "stone"]}
WEB_NOUNS = {
    "upper": {"t-shirt": ["tshirt", "polo", "graphic tee"], "shirt": ["button-down", "oxford shirt", "tunic"],
              "jacket": ["windbreaker", "parka", "bomber"], "coat": ["trench", "trenchcoat", "topcoat"],
              "sweater": ["cardigan", "knitwear", "hoodie"], "dress": ["sundress", "gown", "frock"]},
    "lower": {"pants": ["chinos", "joggers", "bottoms"], "jeans": ["denims", "denim", "skinny jeans"],
              "shorts": ["bermudas", "cutoffs", "hot pants"], "skirt": ["miniskirt", "midi skirt", "kilt"],
              "leggings": ["tights", "yoga pants", "jeggings"]},
    "shoes": {"shoes": ["loafers", "flats", "footwear"], "sneakers": ["kicks", "runners", "tennis shoes"],
              "boots": ["booties", "wellies", "ankle boots"]},
    "hat": {"cap": ["ballcap", "snapback", "trucker hat"], "beanie": ["toque", "bobble hat", "woolly hat"]},
    "bag": {"backpack": ["daypack", "schoolbag", "knapsack"], "handbag": ["tote", "clutch", "pocketbook"],
            "shoulder": ["satchel", "crossbody", "sling bag"]},
    "held": {"umbrella": ["parasol", "brolly"], "phone": ["smartphone", "cellphone", "iphone"],
             "bottle": ["flask", "thermos"], "cup": ["mug", "latte", "takeaway cup"]},
    "glasses": {"glasses": ["specs", "spectacles"], "sunglasses": ["shades", "sunnies"]},
}
WEB_PEOPLE = {("male", "young"): ["lad", "teen", "schoolboy"], ("female", "young"): ["teen girl", "lass", "schoolgirl"],
              ("male", "adult"): ["dude", "bloke", "gent"], ("female", "adult"): ["gal", "madam", "mum"],
              ("male", "old"): ["grandpa", "senior", "pensioner"], ("female", "old"): ["grandma", "granny", "senior lady"]}
WEB_NOISE = ["street photo", "city life", "people on the street", "urban scene", "candid street photography",
             "weekend vibes", "outdoor shot", "commuters", "stock image", "downtown"]
WEB_SALIENCE = {"upper": .9, "lower": .5, "bag": .35, "hat": .3, "held": .15, "shoes": .15, "glasses": .1}
_BENCH_NOUNS = {"upper": UPPER_WORDS, "lower": LOWER_WORDS, "shoes": SHOE_WORDS, "hat": HAT_WORDS,
                "bag": BAG_WORDS, "held": HELD_WORDS, "glasses": GLASSES_WORDS}


def _web_word(rng, ours: list[str], theirs: list[str]) -> str:
    """A benchmark word with probability WEB["same_word"], else one the benchmark never uses."""
    return _choice(rng, ours if rng.random() < WEB["same_word"] else theirs)


def _web_phrase(p: dict, key: str, rng) -> list[tuple]:
    """'[colour] garment' parts (word, tag, attribute, region); the colour may be missing or wrong."""
    value = p[key]
    region = "head" if key == "glasses" else key
    parts = []
    coloured = key not in ("glasses",) and not (key == "held" and value in ("phone", "cup"))
    if coloured and rng.random() >= WEB["no_colour"]:
        name = p[f"{key}_colour"]
        if rng.random() < WEB["wrong_colour"]:
            name = _choice(rng, [c for c in COLOURS if c != name])
        word = _web_word(rng, COLOURS[name][3], WEB_COLOURS[name])
        parts += [(w, "JJ", f"{key}_colour", region) for w in word.split()]
    noun = _web_word(rng, _BENCH_NOUNS[key][value], WEB_NOUNS[key][value])
    return parts + [(w, t, f"{key}_type", region) for w, t in _noun(noun)]


def _web_subject(p: dict, rng) -> list[tuple]:
    if rng.random() < .15:
        return [(_choice(rng, ["person", "pedestrian", "commuter", "tourist", "passerby"]), "NN", "gender", "person")]
    words = _web_word(rng, PERSON_NOUNS[(p["gender"], p["age"])], WEB_PEOPLE[(p["gender"], p["age"])])
    parts = [(w, "NN", "gender", "person") for w in words.split()]
    if rng.random() < .25:  # 'blonde woman', 'long-haired guy'
        hair = _choice(rng, [f"{p['hair_colour']}-haired" if p["hair_colour"] != "blonde" else "blonde",
                             f"{p['hair_length']}-haired"])
        parts.insert(0, (hair, "JJ", "hair", "head"))
    return parts


def _web_mentions(p: dict, rng, n: int) -> list[str]:
    """``n`` attributes (at most those present), the salient ones the likeliest, as alt text picks."""
    present = {k: w for k, w in WEB_SALIENCE.items()
               if k in ("upper", "shoes") or p[k] not in ("none",)}
    keys = list(present)
    w = np.array([present[k] for k in keys])
    n = min(n, len(keys))
    return [keys[i] for i in rng.choice(len(keys), size=n, replace=False, p=w / w.sum())]


def make_web_caption(p: dict, facts: dict, rng) -> tuple[str, dict]:
    """One web-style caption (alt text, shop tags, a short sentence, or nothing about the person) and
    its gold annotation, for the aligned member's shifted corpus; never used by a benchmark split."""
    cap = _Caption()
    form = _choice(rng, WEB["forms"])
    if form == "noise":
        for w in _choice(rng, WEB_NOISE).split():
            cap.add(w, "NN")
        return _render_caption(cap, capitalise=rng.random() < .3)
    n = {"tags": int(rng.integers(1, 4)), "alt": int(rng.integers(1, 3)), "sentence": int(rng.integers(2, 5))}[form]
    phrases = [_web_phrase(p, k, rng) for k in _web_mentions(p, rng, n)]
    if form == "tags":  # 'woman, red coat, black boots' / 'red coat black boots'
        if rng.random() < .5:
            phrases.insert(0, _web_subject(p, rng))
        sep = rng.random() < .5
        for i, ph in enumerate(phrases):
            if i and sep:
                cap.add(",", ",")
            cap.phrase(ph)
        return _render_caption(cap, capitalise=False)
    if form == "alt":  # 'photo of a woman in a red coat and black boots'
        lead = _choice(rng, ["", "photo of", "image of", "portrait of", "street photo of", "picture of"])
        for w in lead.split():
            cap.add(w, "IN" if w == "of" else "NN")
        cap.phrase([("a", "DT", None, None)] + _web_subject(p, rng))
        for w in _choice(rng, ["in", "wearing", "with", "in a", "sporting"]).split():
            cap.add(w, {"in": "IN", "with": "IN", "a": "DT"}.get(w, "VBG"))
    else:  # 'the guy has on a red coat, black boots and a tote.'
        cap.phrase([(_choice(rng, ["the", "this", "a"]), "DT", None, None)] + _web_subject(p, rng))
        for w in _choice(rng, ["has on", "is dressed in", "is sporting", "wears", "rocks"]).split():
            cap.add(w, {"has": "VBZ", "on": "RP", "is": "VBZ", "dressed": "VBN", "in": "IN"}.get(w, "VBZ"))
    for i, ph in enumerate(phrases):
        if i:
            cap.add("and" if i == len(phrases) - 1 else ",", "CC" if i == len(phrases) - 1 else ",")
        cap.phrase(ph)
    if form == "sentence" and rng.random() < .6:
        cap.add(".", ".")
    _typo(cap, rng, WEB["typo"])
    return _render_caption(cap, capitalise=rng.random() < .4)


def _render_caption(cap: _Caption, capitalise: bool) -> tuple[str, dict]:
    text, starts, ends = "", [], []
    sentence_start = True
    for word, tag, _, _ in cap.words:
        if capitalise and sentence_start and word[0].isalpha():
            word = word[0].upper() + word[1:]
        if text and tag not in (",", "."):
            text += " "
        starts.append(len(text))
        text += word
        ends.append(len(text))
        sentence_start = tag == "."
    attributes, i = [], 0
    while i < len(cap.words):  # merge neighbouring words of one attribute into one span
        attr, region = cap.words[i][2], cap.words[i][3]
        j = i + 1
        while j < len(cap.words) and attr and cap.words[j][2:] == [attr, region]:
            j += 1
        if attr:
            attributes.append([starts[i], ends[j - 1], attr, region])
        i = j
    gold = {"attributes": attributes,
            "noun_phrases": [[starts[a], ends[b - 1]] for a, b in cap.phrases],
            "tokens": [text[a:b] for a, b in zip(starts, ends)],
            "pos": [w[1] for w in cap.words]}
    return text, gold


# --- writing, caching ----------------------------------------------------------------------------
def _render_person(args):
    """Images, label maps and captions of one identity (a unit of work for the process pool)."""
    seed, person, n_captions, look_name, captions_style = args
    look = LOOKS[look_name]
    caption = {"benchmark": make_caption, "web": make_web_caption}[captions_style]
    out = []
    for k in range(person["n_images"]):
        rng = np.random.default_rng([seed, 1, person["id"], k])
        rgb, label, facts = render_image(person["attrs"], rng, look)
        file_path = f"{person['split']}/{person['id']:05d}_{k}.jpg"
        jpeg, png = io.BytesIO(), io.BytesIO()
        quality = look.jpeg[0] if look.jpeg[0] == look.jpeg[1] else int(rng.integers(look.jpeg[0], look.jpeg[1] + 1))
        Image.fromarray(rgb).save(jpeg, format="JPEG", quality=quality)
        Image.fromarray(label).save(png, format="PNG", optimize=False)
        crng = np.random.default_rng([seed, 2, person["id"], k])
        captions, golds = [], []
        while len(captions) < n_captions:
            text, gold = caption(person["attrs"], facts, crng)
            if text not in captions:
                captions.append(text)
                golds.append(gold)
        out.append(dict(file_path=file_path, jpeg=jpeg.getvalue(), png=png.getvalue(),
                        facts=facts, regions=region_boxes(label), captions=captions, gold=golds))
    return out


SPLITS = ("train", "val", "test")


def render(profile: str, seed: int, out: Path, workers: int | None = None, splits=SPLITS) -> Path:
    """Render SynthPedes into ``out`` (which must not exist yet) in the CUHK-PEDES layout.

    Each identity is rendered from its own seeded stream, so the output is byte-identical for any
    number of ``workers`` (default: one per core up to 8 for large renders, else in-process), and
    rendering only some ``splits`` gives those splits' images, records and ground truth exactly as
    the full render has them (the explorer's gallery needs only the test split: ``ensure_split``).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown SynthPedes profile {profile!r}; choose one of {list(PROFILES)}")
    if not splits or set(splits) - set(SPLITS):
        raise ValueError(f"splits={splits!r}: choose among {list(SPLITS)}")
    people = [p for p in build_identities(profile, seed) if p["split"] in splits]
    spec = PROFILES[profile]
    jobs = [(seed, person, spec["captions"], spec.get("look", "benchmark"), spec.get("captions_style", "benchmark"))
            for person in people]
    n_images = sum(p["n_images"] for p in people)
    if workers is None:
        workers = 1 if n_images < 600 else min(os.cpu_count() or 1, 8)
    for split in SPLITS:  # every split's folder, empty when not rendered: the layout stays the same
        (out / "imgs" / split).mkdir(parents=True)
        (out / "gt" / split).mkdir(parents=True)
    records, gt_images, gt_captions = [], {}, {}
    with ProcessPoolExecutor(workers) if workers > 1 else _InProcess() as pool:
        for person, images in zip(people, pool.map(_render_person, jobs, chunksize=16)):
            for d in images:  # written as they arrive: memory stays flat for the large profile
                (out / "imgs" / d["file_path"]).write_bytes(d["jpeg"])
                label_path = "gt/" + d["file_path"].replace(".jpg", ".png")
                (out / label_path).write_bytes(d["png"])
                records.append({"split": person["split"], "captions": d["captions"],
                                "file_path": d["file_path"],
                                "processed_tokens": [word_tokenize(c) for c in d["captions"]],
                                "id": person["id"]})
                gt_images[d["file_path"]] = {"id": person["id"], "family": person["family"],
                                             "label_map": label_path, "regions": d["regions"],
                                             **d["facts"]}
                gt_captions[d["file_path"]] = d["gold"]
    identities = {str(p["id"]): {"split": p["split"], "family": p["family"],
                                 **{k: v for k, v in p["attrs"].items() if k != "shades"}}
                  for p in people}
    gt = {"version": VERSION, "profile": profile, "seed": seed, "size": list(SIZE),
          "region_codes": REGION_CODES, "identities": identities, "images": gt_images,
          "captions": gt_captions}
    if tuple(splits) != SPLITS:  # a part is never taken for the whole (rendered_as, ensure)
        gt["splits"] = [s for s in SPLITS if s in splits]
    (out / "reid_raw.json").write_text(json.dumps(records, sort_keys=True))
    (out / GT_FILE).write_text(json.dumps(gt, sort_keys=True))
    return out


class _InProcess:
    """``ProcessPoolExecutor``'s ``map`` without processes (small renders, tests)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, jobs, chunksize=1):
        return map(fn, jobs)


def rendered_as(root) -> dict | None:
    """{"profile", "seed", "version"} of the SynthPedes in ``root`` (from its ground truth), or
    None if ``root`` holds no SynthPedes ground truth."""
    path = Path(root) / GT_FILE
    if not path.exists():
        return None
    gt = json.loads(path.read_text())
    held = {k: gt.get(k) for k in ("profile", "seed", "version")}
    return {**held, "splits": gt["splits"]} if "splits" in gt else held


def cache_root(profile: str, seed: int = 0) -> Path:
    """The folder in the cache that ``ensure(profile, seed)`` renders into (its name says what it holds)."""
    return cache_dir() / "synthpedes" / f"{profile}-seed{seed}-v{VERSION}"


def _render_beside(root: Path, profile: str, seed: int, splits=SPLITS) -> Path:
    """Render into a temporary sibling of ``root`` (renamed into place by the caller, so a crash
    or a concurrent process never leaves a half-written dataset at ``root``); the sibling."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    render(profile, seed, tmp, splits=splits)
    return tmp


def _move_into_place(tmp: Path, root: Path) -> None:
    try:
        os.rename(tmp, root)
    except OSError:  # someone else finished first (or root exists, e.g. an empty folder)
        if (root / "reid_raw.json").exists():
            shutil.rmtree(tmp, ignore_errors=True)
        elif root.exists() and not any(root.iterdir()):
            root.rmdir()
            os.rename(tmp, root)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{root} exists but holds no SynthPedes (no reid_raw.json); "
                                  f"remove it or pass another root") from None


def ensure(profile: str = "smoke", seed: int = 0, root: str | Path | None = None,
           force: bool = False) -> Path:
    """The root of SynthPedes ``profile``/``seed``, rendered on first use.

    Rendered into a temporary sibling folder and renamed, so a crash or a concurrent process never
    leaves a half-written dataset behind. An explicit ``root`` that already holds a SynthPedes of
    another profile, seed or version is refused (``FileExistsError``), or with ``force`` rendered
    anew in its place; a ``root`` with a ``reid_raw.json`` but no SynthPedes ground truth (a real
    dataset?) is always refused.
    """
    default = cache_root(profile, seed)
    root = Path(root) if root else default
    want = {"profile": profile, "seed": seed, "version": VERSION}
    if (root / "reid_raw.json").exists():
        if root == default and not force:  # the folder name says what it holds
            return root
        held = rendered_as(root)
        if held is None:
            raise FileExistsError(f"{root} holds a reid_raw.json but no SynthPedes ({GT_FILE} is "
                                  f"missing); pass another folder (nothing there was changed)")
        if held == want and not force:
            return root
        if not force:
            raise FileExistsError(
                f"{root} holds SynthPedes {held['profile']} seed {held['seed']} (v{held['version']})"
                + (f" ({' + '.join(held['splits'])} only)" if "splits" in held else "") +
                f", not {profile} seed {seed} (v{VERSION}); pass --force (force=True) to render "
                f"{profile} seed {seed} in its place, or another folder")
    tmp = _render_beside(root, profile, seed)
    if force and (root / GT_FILE).exists():  # checked above: a SynthPedes render, safe to replace
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.rename(root, old)
        os.rename(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
        return root
    _move_into_place(tmp, root)
    return root


def ensure_split(profile: str = "smoke", split: str = "test", seed: int = 0) -> Path:
    """A root holding ``split`` of SynthPedes ``profile``/``seed`` in the cache: the full render when
    it is there, else one of that split alone (``<full name>-<split>``, rendered on first use; its
    images and records are the full render's, so the quick test split costs ~45 % of a full render).
    For readers of one split (the explorer's gallery); a run's data is always the full render."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {list(SPLITS)}")
    full = cache_root(profile, seed)
    if (full / "reid_raw.json").exists():
        return full
    root = full.with_name(f"{full.name}-{split}")
    if not (root / "reid_raw.json").exists():
        _move_into_place(_render_beside(root, profile, seed, splits=(split,)), root)
    return root


# --- ground truth --------------------------------------------------------------------------------
@dataclass
class GTImage:
    file_path: str
    id: int
    family: int
    view: str
    regions: dict  # region name -> (x0, y0, x1, y1) in pixels of the 384×128 image
    label_path: Path
    bag_side: str = ""
    held_side: str = ""

    @cached_property
    def labels(self) -> np.ndarray:
        """Region code per pixel (``REGION_CODES``; 0 = background)."""
        return np.asarray(Image.open(self.label_path))

    @property
    def mask(self) -> np.ndarray:
        """Person (foreground) mask, bool [384, 128]."""
        return self.labels > 0


@dataclass
class GTCaption:
    text: str
    attributes: list  # (char_start, char_end, attribute name, region name)
    noun_phrases: list  # (char_start, char_end)
    tokens: list
    pos: list  # gold Penn tag per token


@dataclass
class GroundTruth:
    images: dict  # file_path -> GTImage
    captions: dict  # (file_path, caption index) -> GTCaption
    identities: dict  # id -> attributes (with split and family)


def load_ground_truth(root) -> GroundTruth:
    root = Path(root)
    path = root / GT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: ground truth exists only for SynthPedes "
                                f"(render it with tbpr.synthpedes.ensure or `tbpr synth`)")
    gt = json.loads(path.read_text())
    records = json.loads((root / "reid_raw.json").read_text())
    texts = {r["file_path"]: r["captions"] for r in records}
    images = {fp: GTImage(file_path=fp, id=d["id"], family=d["family"], view=d["view"],
                          regions={k: tuple(v) for k, v in d["regions"].items()},
                          label_path=root / d["label_map"], bag_side=d.get("bag_side", ""),
                          held_side=d.get("held_side", ""))
              for fp, d in gt["images"].items()}
    captions = {(fp, i): GTCaption(text=texts[fp][i], attributes=[tuple(a) for a in g["attributes"]],
                                   noun_phrases=[tuple(s) for s in g["noun_phrases"]],
                                   tokens=g["tokens"], pos=g["pos"])
                for fp, golds in gt["captions"].items() for i, g in enumerate(golds)}
    identities = {int(k): v for k, v in gt["identities"].items()}
    return GroundTruth(images=images, captions=captions, identities=identities)


def region_mask(gt_image: GTImage, region: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Bool mask of ``region`` (``REGIONS``, or "person") at ``size`` (H, W; default 384×128).

    Pixel-exact from the label map; "upper"/"lower" include the bare arms/legs of their band.
    """
    labels = gt_image.labels
    if region == "person":
        mask = labels > 0
    elif region in REGION_CODES:
        codes = [REGION_CODES[region]] + {"upper": [REGION_CODES["arms"]],
                                          "lower": [REGION_CODES["legs"]]}.get(region, [])
        mask = np.isin(labels, codes)
    else:
        raise KeyError(f"unknown region {region!r}; choose from {REGIONS + ('person',)}")
    if size and tuple(size) != labels.shape:
        img = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]),
                                                                   Image.BILINEAR)
        mask = np.asarray(img) >= 128
    return mask


# --- the other on-disk layouts -------------------------------------------------------------------
def write_layout(root, fmt: str) -> Path:
    """Write the annotation file of ``fmt`` next to ``reid_raw.json`` (images are shared).

    ``icfg-pedes``: ``ICFG-PEDES.json``, train/test only (val identities are left out, as ICFG-PEDES
    has no val split), one caption per image. ``rstpreid``: ``data_captions.json`` with ``img_path``.
    """
    root = Path(root)
    records = json.loads((root / "reid_raw.json").read_text())
    if fmt == "cuhk-pedes":
        return root / "reid_raw.json"
    if fmt == "icfg-pedes":
        out = [{"id": r["id"], "file_path": r["file_path"], "captions": r["captions"][:1],
                "processed_tokens": r["processed_tokens"][:1], "split": r["split"]}
               for r in records if r["split"] != "val"]
        path = root / "ICFG-PEDES.json"
    elif fmt == "rstpreid":
        out = [{"id": r["id"], "img_path": r["file_path"], "captions": r["captions"],
                "split": r["split"]} for r in records]
        path = root / "data_captions.json"
    else:
        raise ValueError(f"unknown format {fmt!r}; choose cuhk-pedes, icfg-pedes or rstpreid")
    path.write_text(json.dumps(out, sort_keys=True))
    return path


def main(argv=None) -> int:
    """``tbpr synth --profile smoke|quick|large --out DIR [--seed S] [--format ...] [--force]``"""
    ap = argparse.ArgumentParser(prog="tbpr synth", description=main.__doc__)
    ap.add_argument("--profile", default="quick", choices=list(PROFILES))
    ap.add_argument("--out", default=None, help="output folder (default: the tbpr cache)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", default="cuhk-pedes",
                    choices=["cuhk-pedes", "icfg-pedes", "rstpreid"])
    ap.add_argument("--force", action="store_true",
                    help="render anew even if --out already holds a SynthPedes (of any seed)")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        root = ensure(args.profile, args.seed, args.out, force=args.force)
    except FileExistsError as err:  # one line and exit status 2, like an argument error
        ap.exit(2, f"tbpr synth: error: {err}\n")
    path = write_layout(root, args.format)
    print(f"SynthPedes {args.profile} (seed {args.seed}) at {root} [{path.name}], "
          f"{time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
