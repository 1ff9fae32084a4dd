"""LGUR's released checkpoint (github.com/ZhiyinShao-H/LGUR, ``train_mydecoder_pixelvit_txtimg_3_bert.py:256-261``:
``best.pth.tar`` = ``{'network': TextImgPersonReidNet_mydecoder_pixelVit_transTXT_3_bert,
'W': the 6 ID classifiers, 'optimizer', 'epoch', 'test_best'}``) onto tbpr's LGUR at the
``official`` profile.

``ImageExtract.model`` is TransReID's DeiT-S (``model_TransREID/backbones/vit_pytorch.py:291``)
run with ``local_feature=True``: blocks 0-10 only, no final norm, no classifier, so its block 11,
``norm`` and ``fc`` are dropped; so is ``pos_embed_image``, which the code's forward never reads.
``TXTDecoder`` (2 layers, 512-d heads) is tbpr's PGU ``Trans_P``, ``TXTDecoder_2`` (1 layer) its DGA
``Trans``; each layer is ``[Residual_3(PreNorm_3(Attention_mydecoder)), Residual(PreNorm(FeedForward))]``
(``vit_pytorch/vit_pytorch.py:505-562``) whose ``to_kv`` holds tbpr's key and value maps stacked.
The frozen BERT (``TextExtract.text_embed``, bert-base-uncased) is in the file and fills tbpr's
text encoder, so nothing is read from the hub; its pooler is dropped (the code reads the tokens).
"""
from __future__ import annotations

from ..official import check_complete, flatten, rename
from .model import LGUR

# the checkpoint replaces the DeiT weights, and carries the frozen BERT itself
BUILD_WITHOUT_INIT = {"vision_pretrained": None, "text_pretrained": None, "cache_text_features": False}
SECTIONS = ("network", "W")
OPTIONAL = (r"^steps_done$",)
_LAYER = r"\.transformer\.layers\.(\d+)"
RULES = [  # (regex on the flattened official key, tbpr key or None = dropped on purpose)
    (r"^network\.ImageExtract\.model\.blocks\.11\.", None),  # local_feature: blocks[:-1] only
    (r"^network\.ImageExtract\.model\.(norm|fc)\.", None),
    (r"^network\.ImageExtract\.model\.", "visual.vit."),
    (r"^network\.TextExtract\.text_embed\.pooler\.", None),
    (r"^network\.TextExtract\.text_embed\.embeddings\.position_ids$", None),  # a buffer of older transformers
    (r"^network\.TextExtract\.text_embed\.", "text_encoder."),
    (r"^network\.TextExtract\.lstm\.", "bilstm."),
    (r"^network\.pos_embed_image$", None),  # a parameter the code never reads
    (r"^network\.dict_feature$", "dictionary"),
    (r"^network\.query_embed_image$", "prototypes"),
    (r"^network\.tgt_embed_image$", "prototypes_text"),  # share_query=False only
    (r"^network\.mask\.0\.", "mask_head."),
    (r"^network\.conv_1X1_2\.(\d+)\.block\.0\.weight$", r"part_fcs.\1.weight"),
    (r"^W\.(\d+)\.W\.block\.", r"classifiers.\1."),
] + [rule for decoder, ours in (("TXTDecoder", "pgu"), ("TXTDecoder_2", "dga")) for rule in (
    (rf"^network\.{decoder}{_LAYER}\.0\.fn\.norm\.", rf"{ours}.layers.\1.norm1."),
    (rf"^network\.{decoder}{_LAYER}\.0\.fn\.fn\.to_q\.", rf"{ours}.layers.\1.q."),
    (rf"^network\.{decoder}{_LAYER}\.0\.fn\.fn\.to_out\.0\.", rf"{ours}.layers.\1.out."),
    (rf"^network\.{decoder}{_LAYER}\.1\.fn\.norm\.", rf"{ours}.layers.\1.norm2."),
    (rf"^network\.{decoder}{_LAYER}\.1\.fn\.fn\.net\.0\.", rf"{ours}.layers.\1.ffn.0."),
    (rf"^network\.{decoder}{_LAYER}\.1\.fn\.fn\.net\.3\.", rf"{ours}.layers.\1.ffn.2."),
    (rf"^network\.{decoder}{_LAYER}\.0\.fn\.fn\.to_kv\.weight$", rf"{ours}.layers.\1.kv.weight"),  # split below
)]


def looks_official(ckpt: dict) -> bool:
    network = ckpt.get("network")
    return isinstance(network, dict) and "ImageExtract.model.cls_token" in network and "dict_feature" in network


def overrides_from(ckpt: dict) -> dict:
    """The identity count of the training split the checkpoint was trained on (its classifiers)."""
    bias = ckpt.get("W", {}).get("0.W.block.bias")
    return {"num_classes": int(bias.shape[0])} if bias is not None else {}


def from_official(ckpt: dict, model: LGUR, source: str = "lgur checkpoint") -> dict:
    """tbpr's state dict of ``model`` (its frozen text encoder included) from the code's checkpoint;
    one-line error unless every official tensor is used or dropped by a rule above and every tbpr
    tensor is filled with its shape."""
    flat, _metadata = flatten(ckpt, SECTIONS)
    state, unused = rename(flat, RULES)
    for key in [k for k in state if k.endswith(".kv.weight")]:  # to_kv = [W_k; W_v] (chunk(2) in the code)
        k_weight, v_weight = state.pop(key).chunk(2)
        state[key.replace(".kv.", ".k.")], state[key.replace(".kv.", ".v.")] = k_weight, v_weight
    for key in ("dictionary", "prototypes", "prototypes_text"):
        if key in state:
            state[key] = state[key][0]  # [1, n, D] -> [n, D]
    for key in [k for k in state if k.startswith("part_fcs.")]:
        state[key] = state[key].flatten(1)  # 1x1 conv -> linear
    check_complete(model, state, unused, source, OPTIONAL)
    return state
