"""CADA's released checkpoint (github.com/LinDixuan/CADA, ``train.py:311-319``: ``checkpoint_best.pth`` =
``{'model': CADA, 'optimizer', 'config', 'epoch'}``) onto tbpr's CADA at the ``official`` profile,
and BLIP's ``model_base.pth`` (the initialisation, ``configs/retrieval_cuhk.yaml:6``) onto any
BERT-tokenised profile.

Both use BLIP's names (``models/med.py``, ``models/vit.py``): tbpr's ``_BLIP_NAMES`` (``model.py``)
renames the ViT, the text encoder, the text decoder's BERT (the official profile's separate ARA
decoder) and its LM head; what neither model uses is dropped by a named rule here: the LM head's
copies of tied tensors (``decoder.weight`` is the decoder's word table, ``decoder.bias`` its
``bias``), ``position_ids`` buffers, and in BLIP the momentum encoders, queues and temperature.
"""
from __future__ import annotations

from ..official import check_complete, flatten, rename
from .model import _BLIP_NAMES, CADA

BUILD_WITHOUT_INIT = {"pretrained": None}  # the checkpoint replaces BLIP's weights
SECTIONS = ("model",)
_TIED = [  # (regex, None): tensors saved twice under tied names, and buffers
    (r"^text_decoder\.cls\.predictions\.decoder\.(weight|bias)$", None),
    (r"\.embeddings\.position_ids$", None),
]
_BLIP_ONLY = [  # BLIP pre-training state CADA does not have (blip_pretrain.py: momentum encoders, queues)
    (r"^(visual_encoder_m|text_encoder_m|vision_proj_m|text_proj_m)\.", None),
    (r"^(image_queue|text_queue|queue_ptr|ptr_queue|idx_queue|temp)$", None),
]
BLIP_OPTIONAL = (r"^itm_local_head\.",)  # CADA's token-group head is not in BLIP: stays as built


def looks_official(ckpt: dict) -> bool:
    model = ckpt.get("model")
    return isinstance(model, dict) and "itm_local_head.weight" in model and "visual_encoder.pos_embed" in model


def overrides_from(ckpt: dict) -> dict:
    return {}  # no size depends on the training data (no ID classifier)


def from_official(ckpt: dict, model: CADA, source: str = "cada checkpoint") -> dict:
    """tbpr's state dict of ``model`` from the code's checkpoint; one-line error unless every
    official tensor is used or dropped above and every tbpr tensor is filled with its shape."""
    flat, _metadata = flatten(ckpt, SECTIONS)
    state, unused = rename({k.removeprefix("model."): v for k, v in flat.items()}, _TIED + _BLIP_NAMES)
    check_complete(model, state, unused, source)
    return state


def from_blip(blip_state: dict, model: CADA, source: str = "model_base.pth") -> dict:
    """tbpr's state dict of ``model`` from BLIP's pre-trained ``model_base.pth`` (its ``model``
    entry), checked as strictly: every BLIP tensor used or dropped by a rule, every CADA tensor but
    ``itm_local_head`` filled. The text decoder's BERT fills the separate ARA decoder where the
    model has one (``ara.decoder=separate``) and is dropped otherwise."""
    state = blip_state.get("model", blip_state)
    rules = _TIED + _BLIP_ONLY + _BLIP_NAMES
    if not getattr(model, "separate_ara_decoder", False):
        rules = [(r"^text_decoder\.bert\.", None)] + rules
    out, unused = rename(state, rules)
    check_complete(model, out, unused, source, BLIP_OPTIONAL)
    return out
