"""SSAN's released checkpoint (github.com/zifyloo/SSAN, ``src/train.py:120-129``: ``best.pth.tar`` =
``{'network': TextImgPersonReidNet, 'WL': local ID classifiers, 'WN': non-local ID classifiers,
'epoch', 'test_best'}``) onto tbpr's SSAN at the ``official`` profile.

Where the layouts differ: the code keeps one 1×1 conv per part (``conv_local.k``,
``non_local_net.*_conv.k``, ``src/model/model.py:42-105``), tbpr one ``PartLinear`` holding the K
matrices, and one BatchNorm per part where tbpr has one over the K×1024 channels; MV-NLN's
``cur_sim_conv`` is tbpr's θ (the query side of Eq. 13) and ``part_sim_conv`` its φ (the aggregated
side, Eq. 15). The global ID classifier is not saved by the code (training only: left as built).
Word ids: the code numbers its words from 1 with the unknown word last (``dataset/process_CUHK_data.py:24-27``),
tbpr from 2 after <pad>, <unk>; the embedding rows move by one and the model takes the code's word
list (``processed_data/ind2word.pkl``) as its vocabulary.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from ...data.text import Vocabulary
from ..official import check_complete, flatten, rename
from .model import SSAN

BUILD_WITHOUT_INIT = {"pretrained": None}  # the ImageNet ResNet-50 would be replaced anyway
SECTIONS = ("network", "WL", "WN")
OPTIONAL = (r"^classifier\.g\.", r"^steps_done$")  # not in the checkpoint: training-only state

_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
# one-to-one tensors: (regex on the flattened official key, tbpr key); ImageExtract is
# torchvision's resnet50 children [:-2] (src/model/model.py:137), so its index names the layer
RULES = [(rf"^network\.ImageExtract\.{i}\.", f"visual.{name}.") for i, name in _RESNET.items()] + [
    (r"^network\.TextExtract\.embedding_global\.weight$", "word_emb_global.weight"),
    (r"^network\.TextExtract\.embedding_local\.weight$", "word_emb_local.weight"),
    (r"^network\.TextExtract\.lstm\.(weight_(?:ih|hh)_l0(?:_reverse)?)$", r"bilstm.\1"),
]
PART_CONVS = {  # tbpr PartLinear weight <- the code's per-part 1×1 convs (k = 0..K-1)
    "W_l.weight": "network.conv_local.{k}.block.0.weight",
    "mvnln.W_theta.weight": "network.non_local_net.cur_sim_conv.{k}.block.0.weight",
    "mvnln.W_phi.weight": "network.non_local_net.part_sim_conv.{k}.block.0.weight",
    "mvnln.W_gamma.weight": "network.non_local_net.up_dim_conv.{k}.block.0.weight",
    "mvnln.W_n.weight": "network.non_local_net.conv_local_att.{k}.block.0.weight",
}
PART_CLASSIFIERS = {"classifier.l": "WL.W.{k}.block", "classifier.n": "WN.W.{k}.block"}
PART_BN = "network.non_local_net.up_dim_conv.{k}.block.1.{field}"


def looks_official(ckpt: dict) -> bool:
    network = ckpt.get("network")
    return isinstance(network, dict) and "ImageExtract.0.weight" in network and "TextExtract.lstm.weight_ih_l0" in network


def overrides_from(ckpt: dict) -> dict:
    """The sizes that depend on the training data: identities (the ID classifiers), word rows."""
    out = {}
    if (bias := ckpt.get("WL", {}).get("W.0.block.bias")) is not None:
        out["num_classes"] = int(bias.shape[0])
    if (table := ckpt["network"].get("TextExtract.embedding_global.weight")) is not None:
        out["vocab_size"] = int(table.shape[0])
    return out


def read_word_list(path) -> list[str]:
    """The code's ``ind2word.pkl`` (a pickled list of words, read without running pickled code), or
    the same list as JSON or one word a line."""
    if path is None:
        raise ValueError("ssan: a released checkpoint numbers words by the code's own word list; pass it "
                         "(--official-vocab processed_data/ind2word.pkl from dataset/process_CUHK_data.py)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ssan: word list {path} does not exist (processed_data/ind2word.pkl)")
    if path.suffix == ".pkl":
        words = _ListUnpickler(path.open("rb")).load()
    elif path.suffix == ".json":
        words = json.loads(path.read_text())
    else:
        words = path.read_text().split("\n")
        words = words[:-1] if words and words[-1] == "" else words
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError(f"ssan: {path} is not a list of words")
    return words


class _ListUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # a list of str needs no class: refuse code
        raise pickle.UnpicklingError(f"word list pickles hold only a list of str, not {module}.{name}")


def build(cfg, vocab=None) -> SSAN:
    words = read_word_list(vocab)
    if len(words) + 2 > cfg.vocab_size:
        raise ValueError(f"ssan: the word list has {len(words)} words; they and <pad>, <unk> need "
                         f"vocab_size >= {len(words) + 2} (the checkpoint has {cfg.vocab_size} rows)")
    return SSAN(cfg, vocab=Vocabulary(words))


def _stack(flat: dict, pattern: str, parts: int, used: set) -> torch.Tensor:
    keys = [pattern.format(k=k) for k in range(parts)]
    missing = [k for k in keys if k not in flat]
    if missing:
        raise ValueError(f"ssan checkpoint lacks {missing[0]} (and {len(missing) - 1} more of its parts)")
    used.update(keys)
    return torch.stack([flat[k].flatten(1) if flat[k].dim() > 2 else flat[k] for k in keys])


def from_official(ckpt: dict, model: SSAN, source: str = "ssan checkpoint") -> dict:
    """tbpr's state dict of ``model`` from the code's checkpoint; one-line error unless every
    official tensor is used and every tbpr tensor but ``OPTIONAL`` is filled with its shape."""
    flat, _metadata = flatten(ckpt, SECTIONS)
    parts, used, state = model.cfg.num_parts, set(), {}
    for ours, pattern in PART_CONVS.items():
        state[ours] = _stack(flat, pattern, parts, used)
    for ours, pattern in PART_CLASSIFIERS.items():
        state[f"{ours}.weight"] = _stack(flat, pattern + ".weight", parts, used)
        state[f"{ours}.bias"] = _stack(flat, pattern + ".bias", parts, used)
    for field in ("weight", "bias", "running_mean", "running_var"):  # K BNs -> one over K x 1024
        state[f"mvnln.bn.{field}"] = _stack(flat, PART_BN.replace("{field}", field), parts, used).flatten()
    counts = _stack(flat, PART_BN.replace("{field}", "num_batches_tracked"), parts, used)
    state["mvnln.bn.num_batches_tracked"] = counts[0]
    for conv, ours in (("network.conv_global.block.0.weight", "W_g.weight"),
                       ("network.conv_word_classifier.0.weight", "wam.weight")):
        if conv in flat:
            state[ours] = flat[conv].flatten(1)
            used.add(conv)
    renamed, unused = rename({k: v for k, v in flat.items() if k not in used}, RULES)
    state.update(renamed)
    for table in ("word_emb_global.weight", "word_emb_local.weight"):
        if table in state:  # the code's id j (1..) is tbpr's j + 1; its spare last row takes <unk>'s place
            rows = state[table].shape[0]
            state[table] = state[table][torch.tensor([0, rows - 1, *range(1, rows - 1)])]
    check_complete(model, state, unused, source, OPTIONAL)
    return state

