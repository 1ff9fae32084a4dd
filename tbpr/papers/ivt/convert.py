"""IVT's released checkpoints (github.com/TencentYoutuResearch/PersonRetrieval-IVT) onto tbpr's IVT.

* Fine-tuned models (``processor/processor.py:179-184``: ``checkpoint.pth`` / ``checkpoint_best.pth`` =
  ``{'state_dict': build_transformer_uvt_img_txt_mask, 'optimizer', 'epoch', 'best_acc'}``), at the
  ``official`` profile (stride 12): ``from_official``.
* The pre-training checkpoint (``build_transformer_uvt_img_txt_pretrain``): its ``encoder_vl`` is
  what fine-tuning starts from (``train_cuhkpedes_gpu.py:68-82`` copies every tensor whose name the
  fine-tuning model has, skipping shape mismatches): ``from_pretrain``; ``pretrain_checkpoint`` may
  name the released file directly.

``encoder_vl`` is ``UVT_Bert_IMG_TXT_MASK`` (``model/backbones/vit_vl.py:916-960``): BERT's embeddings
(token types included), the overlapping patch embedding, [CLS], position and type tables, 12
``BlockVisTxt`` blocks with ``mlp_vis`` / ``mlp_txt`` (tbpr: ``mlp_img`` / ``mlp_txt``), final norm.
Dropped by name: the ``position_ids`` buffer, the ITC temperature, and the ID classifier and BN
neck the fine-tuning model builds but its CMPM-only forward never reads (``model/make_model_vl.py:921,
942-947, 982-997``); in pre-training also the fusion encoder and ITM head.
"""
from __future__ import annotations

from ..official import check_complete, flatten, rename
from .model import IVT

BUILD_WITHOUT_INIT = {"pretrained_vit": None, "pretrained_bert": None, "pretrain": False}
SECTIONS = ("state_dict",)
_E = r"^(?:module\.)?encoder_vl\."  # DistributedDataParallel saves a module. prefix; the code strips it
RULES = [
    (_E + r"embeddings\.position_ids$", None),
    (_E + r"embeddings\.", "text_embed."),
    (_E + r"patch_embed\.proj\.", "visual_embed.patch_embed."),
    (_E + r"(cls_token|pos_embed|type_embed)$", r"visual_embed.\1"),
    (_E + r"blocks\.(\d+)\.mlp_vis\.", r"blocks.\1.mlp_img."),
    (_E + r"blocks\.(\d+)\.", r"blocks.\1."),
    (_E + r"norm\.", "norm."),
    (r"^(?:module\.)?(temp|classifier_img\.weight)$", None),
    (r"^(?:module\.)?bottleneck_img\.", None),
]
PRETRAIN_ONLY = [(r"^(?:module\.)?(encoder_fusion|itm)\.", None)]  # fusion encoder F and the ITM head


def _state(ckpt: dict) -> dict:
    flat, _metadata = flatten(ckpt, SECTIONS)
    return {k.removeprefix("state_dict."): v for k, v in flat.items()}


def looks_official(ckpt: dict) -> bool:
    state = ckpt.get("state_dict")
    return isinstance(state, dict) and any(k.removeprefix("module.") == "encoder_vl.cls_token" for k in state)


def overrides_from(ckpt: dict) -> dict:
    return {}  # no size depends on the training data (the ID classifier is dropped)


def from_official(ckpt: dict, model: IVT, source: str = "ivt checkpoint") -> dict:
    """tbpr's state dict of ``model`` from a fine-tuned checkpoint; one-line error unless every
    official tensor is used or dropped above and every tbpr tensor is filled with its shape."""
    state, unused = rename(_state(ckpt), RULES)
    check_complete(model, state, unused, source)
    return state


def from_pretrain(ckpt: dict, model: IVT, source: str = "ivt pre-training checkpoint") -> dict:
    """The encoder of the pre-training checkpoint as tbpr's names for ``model``. As the code, a
    position or type table of another patch grid (pre-trained at stride 16, fine-tuned at 12) is not
    copied; every other tensor must fit."""
    state, unused = rename(_state(ckpt), PRETRAIN_ONLY + RULES)
    ours = model.state_dict()
    skipped = [k for k in ("visual_embed.pos_embed", "visual_embed.type_embed")
               if k in state and k in ours and state[k].shape != ours[k].shape]
    for key in skipped:
        del state[key]
    check_complete(model, state, unused, source, tuple(rf"^{k}$" for k in skipped))
    return state
