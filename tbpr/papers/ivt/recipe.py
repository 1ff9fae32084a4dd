"""How IVT trains beyond the shared loop: the optional "Pre" stage (the official code's ITC + ITM +
MLM with a fusion encoder, ``IVTPretrainer``) run once on its corpus and cached, whose encoder
weights every ``pretrain=True`` model starts from; and the explorer's text-to-patch cosine maps
(Figs. 4/6)."""
from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ...cache import cache_dir, code_version
from ...config import config_hash, to_dict
from ...data.datasets import build_train_loader
from ...data.formats import load
from ...data.text import caption_word_spans
from ...engine import fit
from ...synthpedes import ensure
from ..base import Recipe
from ..official import is_pytorch_file, read_official
from .convert import from_pretrain
from .model import (IVT, IVTConfig, IVTPretrainer, attribute_phrases, dictionary_key, load_word_dictionary,
                    pretrain_stage_config)


class IVTRecipe(Recipe):
    def attach_training_data(self, model: IVT, train_records) -> None:
        """With ``word_level=dictionary``, the official code's attribute dictionary of every training
        caption, checked to cover them all before training starts."""
        if model.cfg.word_level != "dictionary":
            return
        dictionary = load_word_dictionary(model.cfg.word_dictionary)
        missing = [c for r in train_records for c in r.captions if dictionary_key(c) not in dictionary]
        if missing:
            raise ValueError(f"IVT word_dictionary={model.cfg.word_dictionary!r} lacks {len(missing)} of the "
                             f"training captions (e.g. {missing[0][:60]!r}): give the code's JSON of this "
                             "dataset, or word_level=nltk")
        model.word_dictionary = dictionary

    def warm_start(self, model: IVT, train_records) -> None:
        """With ``pretrain=True``, the encoder of the (cached) pre-training stage."""
        if model.cfg.pretrain:
            load_pretrained_encoder(model, ensure_pretrained(model.cfg))

    @torch.no_grad()
    def explain(self, model, caption: str, image: torch.Tensor) -> dict:
        """``IVT.alignment_maps`` with the image encoded once: cos(f_txt, Ẑ^v_k) per patch, f_txt of
        each word alone and of each word-level attribute phrase MLA trains on (Fig. 6)."""
        words = list(dict.fromkeys(w for w, _, _ in caption_word_spans(caption)))
        tokens = words + [p for p in attribute_phrases(caption) if " " in p and p not in words]
        patches = F.normalize(model.image_tokens(image[None].to(model.device))[0, 1:], dim=-1)
        f_txt = F.normalize(model.encode_texts(tokens), dim=-1)
        maps = (f_txt @ patches.T).view(len(tokens), *model.cfg.patch_grid).cpu()
        return {"tokens": tokens, "maps": maps, "kind": "IVT cos(text [CLS], visual token) (Figs. 4/6)"}


def _pretrain_key(cfg: IVTConfig) -> str:
    """Only what changes the pre-trained weights: architecture, initialisation, corpus, recipe, and
    the code that pre-trains (weights computed by older code are not reused)."""
    stage = to_dict(pretrain_stage_config(cfg))
    for switch in ("mask_ratio", "bmm_count", "word_level", "word_dictionary", "cmpm_q_norm", "pretrain_checkpoint"):
        stage.pop(switch)
    return config_hash({**stage, "code": code_version("ivt")})


def _corpus_records(spec: str) -> list:
    if spec.startswith("synthpedes:"):
        _, profile, seed = spec.split(":")
        return load("synthpedes", ensure(profile, seed=int(seed)))["train"]
    if not Path(spec).exists():
        raise FileNotFoundError(f"IVT pretrain_corpus={spec!r} does not exist; give a CUHK-PEDES-format "
                                "root or 'synthpedes:<profile>:<seed>'")
    return load("cuhk-pedes", spec)["train"]


@contextmanager
def _preserved_rng():
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(states[0])
    np.random.set_state(states[1])


def ensure_pretrained(cfg: IVTConfig) -> Path:
    """Path of the pre-trained encoder weights: ``pretrain_checkpoint`` if given, else the cached
    result of pre-training on ``pretrain_corpus`` (trained here on first use)."""
    if cfg.pretrain_checkpoint:
        path = Path(cfg.pretrain_checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"IVT pretrain_checkpoint={str(path)!r} does not exist")
        return path
    if not cfg.pretrain_corpus:
        raise ValueError("IVT with pretrain=True needs pretrain_checkpoint=<safetensors of a pre-trained "
                         "IVT encoder> or pretrain_corpus=<CUHK-format root | 'synthpedes:<profile>:<seed>'>"
                         " to pre-train here; or set pretrain=False")
    path = cache_dir() / "pretrain" / "ivt" / _pretrain_key(cfg) / "encoder.safetensors"
    if not path.exists():
        stage = pretrain_stage_config(cfg)
        with _preserved_rng():  # a cache miss must not change the fine-tuning run's random stream
            pretrainer = IVTPretrainer(stage)
            loader = build_train_loader(_corpus_records(cfg.pretrain_corpus), stage.data, seed=0)
            fit(pretrainer, loader, stage.train, seed=0, progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in pretrainer.encoder.state_dict().items()}, str(tmp))
        tmp.replace(path)
    return path


def load_pretrained_encoder(model: IVT, path: Path) -> None:
    """Copy every pre-trained parameter whose name and shape match (as the official code does).
    ``path`` is tbpr's safetensors, or the official code's released pre-training checkpoint
    (converted by ``convert.from_pretrain``)."""
    own = model.state_dict()
    if is_pytorch_file(path):
        weights = from_pretrain(read_official(path), model, source=str(path))
    else:
        weights = load_file(str(path))
    loaded = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not loaded:
        raise ValueError(f"IVT: no parameter of {path} matches this config; was it pre-trained with "
                         "the same embed_dim/depth?")
    model.load_state_dict(loaded, strict=False)
