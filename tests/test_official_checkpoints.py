"""Released checkpoints of the official codes, converted onto tbpr's models (``tbpr.papers.official``).

We cannot download the released files, so each test builds a state dict with the official code's
module names and shapes, written here as data: small tables read off the official model code
(file:line in each table's comment), expanded per layer / part. Loading it must use every key,
leave no tbpr tensor unfilled (but the training-only ones the code never saved) and match every
shape, at the paper sizes (on the meta device) and, with values, at reduced sizes.
"""
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tbpr import cli
from tbpr.experiments import load_trained
from tbpr.papers import create_model, get_config, official, recipe
from tbpr.papers.cada import convert as cada_convert
from tbpr.papers.ivt import convert as ivt_convert
from tbpr.papers.lgur import convert as lgur_convert
from tbpr.papers.ssan import convert as ssan_convert


def tensors(shapes: dict, device="cpu", seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7, device=device)
        elif device == "meta":
            out[key] = torch.empty(shape, device="meta")
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5  # a variance
        else:
            out[key] = torch.randn(shape, generator=g) * 0.05
    return out


def nest(flat: dict, sections) -> dict:
    """``{"network.a.b": t}`` -> ``{"network": {"a.b": t}}`` for the checkpoint's sections."""
    out = {}
    for key, value in flat.items():
        section, rest = key.split(".", 1)
        assert section in sections, key
        out.setdefault(section, {})[rest] = value
    return out


def bn(prefix: str, n: int) -> dict:
    return {f"{prefix}.{f}": (n,) for f in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


# ----------------------------------------------------------------------------- SSAN
def torchvision_resnet50(prefix: str) -> dict:
    """torchvision's resnet50 children [:-2] as ``nn.Sequential`` (SSAN src/model/model.py:137):
    0 conv1, 1 bn1, 4-7 layer1-4 of (3, 4, 6, 3) bottlenecks, widths 64-512, expansion 4."""
    shapes = {f"{prefix}.0.weight": (64, 3, 7, 7), **bn(f"{prefix}.1", 64)}
    in_ch = 64
    for index, blocks, width in ((4, 3, 64), (5, 4, 128), (6, 6, 256), (7, 3, 512)):
        for b in range(blocks):
            p = f"{prefix}.{index}.{b}"
            shapes |= {f"{p}.conv1.weight": (width, in_ch, 1, 1), **bn(f"{p}.bn1", width),
                       f"{p}.conv2.weight": (width, width, 3, 3), **bn(f"{p}.bn2", width),
                       f"{p}.conv3.weight": (4 * width, width, 1, 1), **bn(f"{p}.bn3", 4 * width)}
            if b == 0:
                shapes |= {f"{p}.downsample.0.weight": (4 * width, in_ch, 1, 1), **bn(f"{p}.downsample.1", 4 * width)}
            in_ch = 4 * width
    return shapes


def ssan_official_shapes(vocab=5000, classes=11000, parts=6, feature=1024) -> dict:
    """SSAN's best.pth.tar (src/train.py:120-127) with train.sh's sizes: --feature_length 1024,
    --part 6, --vocab_size 5000, --class_num 11000."""
    shapes = torchvision_resnet50("network.ImageExtract")
    shapes |= {  # src/model/text_feature_extract.py:16-19: two tables, one bias-free Bi-LSTM 512 -> 2048
        "network.TextExtract.embedding_local.weight": (vocab, 512),
        "network.TextExtract.embedding_global.weight": (vocab, 512),
        **{f"network.TextExtract.lstm.weight_{m}_l0{d}": (4 * 2048, 512 if m == "ih" else 2048)
           for m in ("ih", "hh") for d in ("", "_reverse")},
        "network.conv_global.block.0.weight": (feature, 2048, 1, 1),  # model.py:150
        "network.conv_word_classifier.0.weight": (parts, 2048, 1, 1),  # model.py:155-158
    }
    half = feature // 2  # NonLocalNet(opt, dim_cut=2), model.py:71-83, 151
    for k in range(parts):
        nl = "network.non_local_net"
        shapes |= {f"network.conv_local.{k}.block.0.weight": (feature, 2048, 1, 1),  # model.py:144-147
                   f"{nl}.up_dim_conv.{k}.block.0.weight": (1024, half, 1, 1), **bn(f"{nl}.up_dim_conv.{k}.block.1", 1024),
                   f"{nl}.part_sim_conv.{k}.block.0.weight": (half, feature, 1, 1),
                   f"{nl}.cur_sim_conv.{k}.block.0.weight": (half, feature, 1, 1),
                   f"{nl}.conv_local_att.{k}.block.0.weight": (512, feature, 1, 1),
                   # src/loss/Id_loss.py:22-46: Id_Loss(opt, part, dim).W.k.block = Linear(dim, class_num)
                   f"WL.W.{k}.block.weight": (classes, feature), f"WL.W.{k}.block.bias": (classes,),
                   f"WN.W.{k}.block.weight": (classes, 512), f"WN.W.{k}.block.bias": (classes,)}
    return shapes


def ssan_checkpoint(device="cpu", **sizes) -> dict:
    return {**nest(tensors(ssan_official_shapes(**sizes), device), ssan_convert.SECTIONS),
            "epoch": 41, "test_best": torch.tensor(61.4)}


SMALL_SSAN = {"num_classes": 7, "vocab_size": 30}
WORDS = ["man", "shirt", "red", "woman", "bag", "black", "white", "shoes"]


def test_ssan_official_names_and_shapes_fill_the_official_profile_exactly():
    model = create_model("ssan", "official", device="meta")
    state = ssan_convert.from_official(ssan_checkpoint("meta"), model)
    ours = model.state_dict()
    assert set(ours) - set(state) == {"classifier.g.weight", "classifier.g.bias", "steps_done"}  # never saved
    assert all(tuple(state[k].shape) == tuple(ours[k].shape) for k in state)
    # the table itself: ResNet-50 (6 stem + 16 bottlenecks x 18 + 4 downsamples x 6), 2 word tables,
    # 4 LSTM matrices, W_g, WAM; per part W_l, W_gamma + its BN, theta, phi, W_n, two ID classifiers
    assert len(ssan_official_shapes()) == (6 + 16 * 18 + 4 * 6) + 2 + 4 + 2 + 6 * (1 + 1 + 5 + 3 + 2 + 2)


def test_ssan_conversion_puts_each_official_tensor_where_the_code_uses_it(tmp_path):
    ckpt = ssan_checkpoint(vocab=30, classes=7)
    model = ssan_convert.build(get_config("ssan", "official", {**SMALL_SSAN, "pretrained": None}),
                               vocab=_word_list(tmp_path))
    state = ssan_convert.from_official(ckpt, model)
    net = ckpt["network"]
    assert torch.equal(state["visual.layer3.5.conv2.weight"], net["ImageExtract.6.5.conv2.weight"])
    assert torch.equal(state["W_l.weight"][2], net["conv_local.2.block.0.weight"][:, :, 0, 0])
    assert torch.equal(state["mvnln.W_theta.weight"][4], net["non_local_net.cur_sim_conv.4.block.0.weight"][:, :, 0, 0])
    assert torch.equal(state["mvnln.W_phi.weight"][4], net["non_local_net.part_sim_conv.4.block.0.weight"][:, :, 0, 0])
    assert torch.equal(state["mvnln.bn.running_var"][1024 * 3:1024 * 4],
                       net["non_local_net.up_dim_conv.3.block.1.running_var"])
    assert torch.equal(state["classifier.n.bias"][5], ckpt["WN"]["W.5.block.bias"])
    assert torch.equal(state["wam.weight"], net["conv_word_classifier.0.weight"][:, :, 0, 0])
    # word ids: the code's j-th word is its row j + 1 (dataset/process_CUHK_data.py:24-27) and ours j + 2
    theirs = net["TextExtract.embedding_global.weight"]
    for j, word in enumerate(WORDS):
        assert torch.equal(state["word_emb_global.weight"][model.vocab.stoi[word]], theirs[j + 1])
    assert torch.equal(state["word_emb_global.weight"][0], theirs[0])  # padding


def _word_list(tmp_path) -> str:
    path = tmp_path / "ind2word.pkl"
    path.write_bytes(pickle.dumps(WORDS, pickle.HIGHEST_PROTOCOL))  # as save_dict writes it
    return str(path)


@pytest.mark.parametrize("change, message", [
    (lambda c: c["network"].update({"extra_head.weight": torch.zeros(3)}), "unused official keys: network.extra_head"),
    (lambda c: c["network"].pop("conv_global.block.0.weight"), "does not fill: W_g.weight"),
    (lambda c: c["network"].update({"ImageExtract.0.weight": torch.zeros(64, 3, 5, 5)}), "shapes differ: visual.conv1"),
    (lambda c: c["WL"].pop("W.3.block.bias"), "lacks WL.W.3.block.bias"),
])
def test_ssan_conversion_refuses_a_checkpoint_that_does_not_fit_in_one_line(tmp_path, change, message):
    ckpt = ssan_checkpoint(vocab=30, classes=7)
    change(ckpt)
    model = ssan_convert.build(get_config("ssan", "official", {**SMALL_SSAN, "pretrained": None}),
                               vocab=_word_list(tmp_path))
    with pytest.raises(ValueError, match=message) as err:
        ssan_convert.from_official(ckpt, model)
    assert "\n" not in str(err.value)


def test_ssan_released_checkpoint_evaluates_through_tbpr_eval(tmp_path, smoke_root, capsys):
    path = tmp_path / "best.pth.tar"
    torch.save(ssan_checkpoint(vocab=30, classes=7), path)
    overrides = {**SMALL_SSAN, "data.image_size": [64, 32]}
    cfg = get_config("ssan", "official", overrides)
    model = load_trained("ssan", cfg, path, official_vocab=_word_list(tmp_path))
    assert model.vocab.itos[2:] == WORDS and not model.training
    with pytest.raises(ValueError, match="official-vocab"):
        load_trained("ssan", cfg, path)
    cli.main(["eval", "ssan", "--profile", "official", "--checkpoint", str(path), "--data-root", str(smoke_root),
              "--official-vocab", _word_list(tmp_path), "--set", "data.image_size=[64,32]"])  # sizes: from the file
    assert '"R1"' in capsys.readouterr().out


def test_a_file_of_another_kind_is_refused_in_one_line(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ValueError, match="neither a tbpr model.safetensors nor the official ssan"):
        load_trained("ssan", get_config("ssan", "official"), path)
    assert official.is_pytorch_file(path) and not official.is_pytorch_file(tmp_path / "missing.pth")
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)  # a pickle: 0x80 first
    assert official.is_pytorch_file(legacy)
    safetensors = tmp_path / "model.safetensors"  # its header is 128 bytes long: the file starts with 0x80
    save_file({"w": torch.zeros(1)}, str(safetensors), metadata={"pad": "x" * 41})
    assert safetensors.read_bytes()[:1] == b"\x80" and not official.is_pytorch_file(safetensors)
    with pytest.raises(ValueError, match="no converter"):
        official.converter("mia")


# ----------------------------------------------------------------------------- LGUR
def vit(prefix: str, depth: int, width: int, tokens: int, classes: int) -> dict:
    """TransReID's ViT (LGUR model_TransREID/backbones/vit_pytorch.py:291-350): conv patches,
    [CLS], positions, pre-norm blocks (qkv with bias, proj, fc1/fc2 MLP x4), final norm and fc."""
    shapes = {f"{prefix}.cls_token": (1, 1, width), f"{prefix}.pos_embed": (1, tokens, width),
              f"{prefix}.patch_embed.proj.weight": (width, 3, 16, 16), f"{prefix}.patch_embed.proj.bias": (width,),
              f"{prefix}.norm.weight": (width,), f"{prefix}.norm.bias": (width,),
              f"{prefix}.fc.weight": (classes, width), f"{prefix}.fc.bias": (classes,)}
    for b in range(depth):
        p = f"{prefix}.blocks.{b}"
        shapes |= {f"{p}.norm1.weight": (width,), f"{p}.norm1.bias": (width,),
                   f"{p}.attn.qkv.weight": (3 * width, width), f"{p}.attn.qkv.bias": (3 * width,),
                   f"{p}.attn.proj.weight": (width, width), f"{p}.attn.proj.bias": (width,),
                   f"{p}.norm2.weight": (width,), f"{p}.norm2.bias": (width,),
                   f"{p}.mlp.fc1.weight": (4 * width, width), f"{p}.mlp.fc1.bias": (4 * width,),
                   f"{p}.mlp.fc2.weight": (width, 4 * width), f"{p}.mlp.fc2.bias": (width,)}
    return shapes


def hf_bert(prefix: str, layers: int, width=768, ffn=3072, vocab=30522, position_ids=True) -> dict:
    """transformers' BertModel (bert-base-uncased) as LGUR's TextExtract_Bert_lstm holds it
    (model/text_feature_extract.py:68-69), with its pooler; older transformers also save position_ids."""
    shapes = {f"{prefix}.embeddings.word_embeddings.weight": (vocab, width),
              f"{prefix}.embeddings.position_embeddings.weight": (512, width),
              f"{prefix}.embeddings.token_type_embeddings.weight": (2, width),
              f"{prefix}.embeddings.LayerNorm.weight": (width,), f"{prefix}.embeddings.LayerNorm.bias": (width,),
              f"{prefix}.pooler.dense.weight": (width, width), f"{prefix}.pooler.dense.bias": (width,)}
    if position_ids:
        shapes[f"{prefix}.embeddings.position_ids"] = (1, 512)
    for n in range(layers):
        p = f"{prefix}.encoder.layer.{n}"
        for lin, (o, i) in {"attention.self.query": (width, width), "attention.self.key": (width, width),
                            "attention.self.value": (width, width), "attention.output.dense": (width, width),
                            "intermediate.dense": (ffn, width), "output.dense": (width, ffn)}.items():
            shapes |= {f"{p}.{lin}.weight": (o, i), f"{p}.{lin}.bias": (o,)}
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes |= {f"{p}.{ln}.weight": (width,), f"{p}.{ln}.bias": (width,)}
    return shapes


def mydecoder(prefix: str, depth: int, heads: int, head_dim: int, mlp: int, dim=384) -> dict:
    """LGUR's mydecoder (vit_pytorch/vit_pytorch.py:505-562, 623-633): per layer
    [Residual_3(PreNorm_3(Attention_mydecoder)), Residual(PreNorm(FeedForward))]."""
    inner, shapes = heads * head_dim, {}
    for n in range(depth):
        p = f"{prefix}.transformer.layers.{n}"
        shapes |= {f"{p}.0.fn.norm.weight": (dim,), f"{p}.0.fn.norm.bias": (dim,),
                   f"{p}.0.fn.fn.to_q.weight": (inner, dim), f"{p}.0.fn.fn.to_kv.weight": (2 * inner, dim),
                   f"{p}.0.fn.fn.to_out.0.weight": (dim, inner), f"{p}.0.fn.fn.to_out.0.bias": (dim,),
                   f"{p}.1.fn.norm.weight": (dim,), f"{p}.1.fn.norm.bias": (dim,),
                   f"{p}.1.fn.fn.net.0.weight": (mlp, dim), f"{p}.1.fn.fn.net.0.bias": (mlp,),
                   f"{p}.1.fn.fn.net.3.weight": (dim, mlp), f"{p}.1.fn.fn.net.3.bias": (dim,)}
    return shapes


def lgur_official_shapes(classes=11000, bert_layers=12, parts=6) -> dict:
    """LGUR's best.pth.tar (train_mydecoder_pixelvit_txtimg_3_bert.py:256-261; model/DETR_model.py:129-159,
    opt: feature_length 512, d_model 1024, num_query 6, share_query True, class_num 11000)."""
    shapes = vit("network.ImageExtract.model", 12, 384, 1 + 24 * 8, 1000)  # deit_small at 384x128
    shapes |= hf_bert("network.TextExtract.text_embed", bert_layers)
    shapes |= {f"network.TextExtract.lstm.weight_{m}_l0{d}": (4 * 384, 768 if m == "ih" else 384)
               for m in ("ih", "hh") for d in ("", "_reverse")}
    shapes |= mydecoder("network.TXTDecoder", 2, 6, 512, 512) | mydecoder("network.TXTDecoder_2", 1, 6, 64, 768)
    shapes |= {f"network.conv_1X1_2.{k}.block.0.weight": (512, 384, 1, 1) for k in range(parts)}
    shapes |= {"network.pos_embed_image": (1, 48, 1024), "network.query_embed_image": (1, parts, 384),
               "network.dict_feature": (1, 400, 384), "network.mask.0.weight": (1, 384), "network.mask.0.bias": (1,)}
    for k in range(parts):  # src Id_loss.py: Id_Loss(opt).W = classifier(feature_length, class_num).block
        shapes |= {f"W.{k}.W.block.weight": (classes, 512), f"W.{k}.W.block.bias": (classes,)}
    return shapes


def lgur_checkpoint(device="cpu", **sizes) -> dict:
    return {**nest(tensors(lgur_official_shapes(**sizes), device), lgur_convert.SECTIONS),
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 38, "test_best": 64.9}


def test_lgur_official_names_and_shapes_fill_the_official_profile_exactly():
    cfg = get_config("lgur", "official", lgur_convert.BUILD_WITHOUT_INIT)
    with torch.device("meta"):
        model = lgur_convert.LGUR(cfg)
    state = lgur_convert.from_official(lgur_checkpoint("meta"), model)
    ours = model.state_dict()
    assert set(ours) - set(state) == {"steps_done"}  # a training counter; the frozen BERT is filled too
    assert all(tuple(state[k].shape) == tuple(ours[k].shape) for k in state)


def test_lgur_conversion_puts_each_official_tensor_where_the_code_uses_it():
    ckpt = lgur_checkpoint(classes=7, bert_layers=1)
    cfg = get_config("lgur", "official", {**lgur_convert.BUILD_WITHOUT_INIT, **lgur_convert.overrides_from(ckpt),
                                          "text_layers": 1})
    model = lgur_convert.LGUR(cfg)
    state = lgur_convert.from_official(ckpt, model)
    net = ckpt["network"]
    kv = net["TXTDecoder.transformer.layers.1.0.fn.fn.to_kv.weight"]
    assert torch.equal(state["pgu.layers.1.k.weight"], kv[:3072]) and torch.equal(state["pgu.layers.1.v.weight"], kv[3072:])
    assert torch.equal(state["dga.layers.0.ffn.2.bias"], net["TXTDecoder_2.transformer.layers.0.1.fn.fn.net.3.bias"])
    assert torch.equal(state["visual.vit.blocks.10.mlp.fc2.weight"], net["ImageExtract.model.blocks.10.mlp.fc2.weight"])
    assert torch.equal(state["dictionary"], net["dict_feature"][0])
    assert torch.equal(state["part_fcs.3.weight"], net["conv_1X1_2.3.block.0.weight"][:, :, 0, 0])
    assert torch.equal(state["classifiers.5.bias"], ckpt["W"]["5.W.block.bias"])
    assert torch.equal(state["text_encoder.encoder.layer.0.output.dense.weight"],
                       net["TextExtract.text_embed.encoder.layer.0.output.dense.weight"])
    assert model.load_state_dict(state, strict=False).missing_keys == ["steps_done"]
    assert model.cfg.num_classes == 7


def test_lgur_released_checkpoint_evaluates_without_the_hub(tmp_path, smoke_root, capsys):
    path = tmp_path / "best.pth.tar"
    torch.save(lgur_checkpoint(classes=7, bert_layers=1), path)
    cli.main(["eval", "lgur", "--profile", "official", "--checkpoint", str(path), "--data-root", str(smoke_root),
              "--set", "text_layers=1"])
    assert '"R1"' in capsys.readouterr().out
    ckpt = lgur_checkpoint(classes=7, bert_layers=1)
    del ckpt["network"]["TextExtract.text_embed.encoder.layer.0.output.dense.bias"]
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="does not fill: text_encoder.encoder.layer.0.output.dense.bias"):
        load_trained("lgur", get_config("lgur", "official", {"text_layers": 1}), path)


# ----------------------------------------------------------------------------- CADA and BLIP
def blip_vit(prefix: str, depth: int, width: int, tokens: int) -> dict:
    """BLIP's ViT (CADA models/vit.py:113-161): the ViT above without a classifier."""
    return {k: v for k, v in vit(prefix, depth, width, tokens, 1).items() if ".fc." not in k}


def med_bert(prefix: str, layers: int, width: int, ffn: int, vocab=30524, image_width=None) -> dict:
    """BLIP's MED BertModel (CADA models/med.py:52-66, 97-125, 325-336; configs/med_config.json:
    add_cross_attention true, no token types, no pooler): word and position tables with a
    position_ids buffer, and per layer self-attention, cross-attention (keys/values from the ViT
    width), FFN, each with its output LayerNorm."""
    image_width = image_width or width
    shapes = {f"{prefix}.embeddings.word_embeddings.weight": (vocab, width),
              f"{prefix}.embeddings.position_embeddings.weight": (512, width),
              f"{prefix}.embeddings.LayerNorm.weight": (width,), f"{prefix}.embeddings.LayerNorm.bias": (width,),
              f"{prefix}.embeddings.position_ids": (1, 512)}
    for n in range(layers):
        p = f"{prefix}.encoder.layer.{n}"
        linears = {"attention.self.query": (width, width), "attention.self.key": (width, width),
                   "attention.self.value": (width, width), "attention.output.dense": (width, width),
                   "crossattention.self.query": (width, width), "crossattention.self.key": (width, image_width),
                   "crossattention.self.value": (width, image_width), "crossattention.output.dense": (width, width),
                   "intermediate.dense": (ffn, width), "output.dense": (width, ffn)}
        for lin, (o, i) in linears.items():
            shapes |= {f"{p}.{lin}.weight": (o, i), f"{p}.{lin}.bias": (o,)}
        for ln in ("attention.output.LayerNorm", "crossattention.output.LayerNorm", "output.LayerNorm"):
            shapes |= {f"{p}.{ln}.weight": (width,), f"{p}.{ln}.bias": (width,)}
    return shapes


def lm_head(prefix: str, width: int, vocab=30524) -> dict:
    """BertOnlyMLMHead (med.py:512-556): transform dense + LayerNorm, the output matrix tied to the
    word table and its bias saved twice (``bias`` and ``decoder.bias``)."""
    return {f"{prefix}.predictions.bias": (vocab,), f"{prefix}.predictions.decoder.bias": (vocab,),
            f"{prefix}.predictions.decoder.weight": (vocab, width),
            f"{prefix}.predictions.transform.dense.weight": (width, width),
            f"{prefix}.predictions.transform.dense.bias": (width,),
            f"{prefix}.predictions.transform.LayerNorm.weight": (width,),
            f"{prefix}.predictions.transform.LayerNorm.bias": (width,)}


def cada_official_shapes(width=768, depth=12, ffn=3072, tokens=197, embed=256) -> dict:
    """CADA's model (models/cada.py:17-57, task ['global', 'local', 'seg', 'attr']): ViT-B/16 at 224,
    text encoder, projections, the two ITM heads, the separate text decoder BertMLMLMHeadModel."""
    shapes = blip_vit("visual_encoder", depth, width, tokens)
    shapes |= med_bert("text_encoder", depth, width, ffn) | med_bert("text_decoder.bert", depth, width, ffn)
    shapes |= lm_head("text_decoder.cls", width)
    shapes |= {"vision_proj.weight": (embed, width), "vision_proj.bias": (embed,),
               "text_proj.weight": (embed, width), "text_proj.bias": (embed,),
               "itm_head.weight": (2, width), "itm_head.bias": (2,),
               "itm_local_head.weight": (2, width), "itm_local_head.bias": (2,)}
    return shapes


def blip_pretrain_shapes(width=768, depth=12, ffn=3072, tokens=197, embed=256, queue=57600) -> dict:
    """BLIP's model_base.pth (salesforce/BLIP models/blip_pretrain.py:19-96): the same encoders and
    decoder (no itm_local_head), momentum copies, queues, temperature."""
    shapes = {k: v for k, v in cada_official_shapes(width, depth, ffn, tokens, embed).items()
              if not k.startswith("itm_local_head")}
    shapes |= blip_vit("visual_encoder_m", depth, width, tokens) | med_bert("text_encoder_m", depth, width, ffn)
    shapes |= {"vision_proj_m.weight": (embed, width), "vision_proj_m.bias": (embed,),
               "text_proj_m.weight": (embed, width), "text_proj_m.bias": (embed,),
               "image_queue": (embed, queue), "text_queue": (embed, queue), "queue_ptr": (1,), "temp": ()}
    return shapes


SMALL_CADA = {"vision.width": 32, "vision.depth": 1, "vision.heads": 2, "text.width": 32, "text.depth": 1,
              "text.heads": 2, "text.ffn": 64, "embed_dim": 16}
SMALL_CADA_SHAPES = {"width": 32, "depth": 1, "ffn": 64, "embed": 16}


def test_cada_official_names_and_shapes_fill_the_official_profile_exactly():
    model = create_model("cada", "official", device="meta")
    ckpt = {"model": tensors(cada_official_shapes(), "meta"), "config": {"k_test": 32}, "epoch": 17}
    state = cada_convert.from_official(ckpt, model)
    ours = model.state_dict()
    assert set(ours) == set(state) and all(tuple(state[k].shape) == tuple(ours[k].shape) for k in state)


def test_cada_conversion_puts_each_official_tensor_where_the_code_uses_it():
    model = create_model("cada", "official", **SMALL_CADA, pretrained=None)
    ckpt = {"model": tensors(cada_official_shapes(**SMALL_CADA_SHAPES))}
    state = cada_convert.from_official(ckpt, model)
    m = ckpt["model"]
    assert torch.equal(state["text_decoder.layers.0.cross_attn.key.weight"],
                       m["text_decoder.bert.encoder.layer.0.crossattention.self.key.weight"])
    assert torch.equal(state["text_encoder.layers.0.self_attn.out.bias"],
                       m["text_encoder.encoder.layer.0.attention.output.dense.bias"])
    assert torch.equal(state["mlm_head.norm.weight"], m["text_decoder.cls.predictions.transform.LayerNorm.weight"])
    assert torch.equal(state["itm_local_head.bias"], m["itm_local_head.bias"])
    model.load_state_dict(state)
    assert model.mlm_head.word_embeddings[0].weight.data_ptr() == model.text_decoder.word.weight.data_ptr()
    with pytest.raises(ValueError, match="converted keys tbpr's model lacks: text_decoder"):
        cada_convert.from_official(ckpt, create_model("cada", "paper", **SMALL_CADA, pretrained=None))


@pytest.mark.parametrize("profile", ["paper", "official"])
def test_blip_model_base_names_and_shapes_initialise_cada(profile):
    """The initialisation: every BLIP tensor used or dropped by a named rule; the text decoder's BERT
    fills the official profile's separate ARA decoder and is dropped by the paper's shared one."""
    model = create_model("cada", profile, device="meta")
    blip = {"model": tensors(blip_pretrain_shapes(), "meta")}
    state = cada_convert.from_blip(blip, model)
    assert set(model.state_dict()) - set(state) == {"itm_local_head.weight", "itm_local_head.bias"}
    assert any(k.startswith("text_decoder.") for k in state) == (profile == "official")
    blip["model"]["text_encoder.pooler.dense.weight"] = torch.empty(768, 768, device="meta")
    with pytest.raises(ValueError, match="unused official keys: text_encoder.pooler.dense.weight"):
        cada_convert.from_blip(blip, model)


def test_cada_released_checkpoint_evaluates_through_tbpr_eval(tmp_path, smoke_root, capsys):
    path = tmp_path / "checkpoint_best.pth"
    torch.save({"model": tensors(cada_official_shapes(**SMALL_CADA_SHAPES)), "epoch": 3,
                "config": {"batch_size_train": 24}}, path)
    sets = [f"{k}={v}" for k, v in SMALL_CADA.items()] + ["rerank_k=2"]
    cli.main(["eval", "cada", "--profile", "official", "--checkpoint", str(path), "--data-root", str(smoke_root),
              "--set", *sets])
    assert '"R1"' in capsys.readouterr().out


# ----------------------------------------------------------------------------- IVT
def uvt_encoder(prefix: str, depth=12, width=768, ffn=3072, tokens=1 + 31 * 10, vocab=30522) -> dict:
    """IVT's encoder_vl, UVT_Bert_IMG_TXT_MASK (model/backbones/vit_vl.py:916-960): BertEmbeddings
    (667-690, token types and a position_ids buffer), the overlapping patch conv, [CLS], position and
    type tables, BlockVisTxt blocks (466-481: AttentionMask qkv/proj, mlp_vis, mlp_txt), final norm."""
    shapes = {f"{prefix}.embeddings.word_embeddings.weight": (vocab, width),
              f"{prefix}.embeddings.position_embeddings.weight": (512, width),
              f"{prefix}.embeddings.token_type_embeddings.weight": (2, width),
              f"{prefix}.embeddings.LayerNorm.weight": (width,), f"{prefix}.embeddings.LayerNorm.bias": (width,),
              f"{prefix}.embeddings.position_ids": (1, 512),
              f"{prefix}.patch_embed.proj.weight": (width, 3, 16, 16), f"{prefix}.patch_embed.proj.bias": (width,),
              f"{prefix}.cls_token": (1, 1, width), f"{prefix}.pos_embed": (1, tokens, width),
              f"{prefix}.type_embed": (1, tokens, width), f"{prefix}.norm.weight": (width,), f"{prefix}.norm.bias": (width,)}
    for b in range(depth):
        p = f"{prefix}.blocks.{b}"
        shapes |= {f"{p}.norm1.weight": (width,), f"{p}.norm1.bias": (width,),
                   f"{p}.attn.qkv.weight": (3 * width, width), f"{p}.attn.qkv.bias": (3 * width,),
                   f"{p}.attn.proj.weight": (width, width), f"{p}.attn.proj.bias": (width,),
                   f"{p}.norm2.weight": (width,), f"{p}.norm2.bias": (width,)}
        for mlp in ("mlp_vis", "mlp_txt"):
            shapes |= {f"{p}.{mlp}.fc1.weight": (ffn, width), f"{p}.{mlp}.fc1.bias": (ffn,),
                       f"{p}.{mlp}.fc2.weight": (width, ffn), f"{p}.{mlp}.fc2.bias": (width,)}
    return shapes


def ivt_official_shapes(prefix="", classes=11003, **sizes) -> dict:
    """build_transformer_uvt_img_txt_mask (model/make_model_vl.py:906-947): temp, encoder_vl, and the
    ID classifier and BN neck it builds but does not use."""
    width = sizes.get("width", 768)
    return {f"{prefix}temp": (), **uvt_encoder(f"{prefix}encoder_vl", **sizes),
            f"{prefix}classifier_img.weight": (classes, width), **bn(f"{prefix}bottleneck_img", width)}


SMALL_IVT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "data.image_size": [64, 32]}
SMALL_IVT_SHAPES = {"width": 32, "depth": 1, "ffn": 128, "tokens": 1 + 5 * 2}  # stride 12 at 64x32


def test_ivt_official_names_and_shapes_fill_the_official_profile_exactly():
    model = create_model("ivt", "official", device="meta")
    state = ivt_convert.from_official({"state_dict": tensors(ivt_official_shapes("module."), "meta")}, model)
    ours = model.state_dict()
    assert set(ours) == set(state) and all(tuple(state[k].shape) == tuple(ours[k].shape) for k in state)


def test_ivt_conversion_puts_each_official_tensor_where_the_code_uses_it(tmp_path, smoke_root, capsys):
    ckpt = {"state_dict": tensors(ivt_official_shapes(**SMALL_IVT_SHAPES)), "epoch": 71, "best_acc": np.float64(61.2)}
    model = create_model("ivt", "official", **SMALL_IVT, **ivt_convert.BUILD_WITHOUT_INIT)
    state = ivt_convert.from_official(ckpt, model)
    sd = ckpt["state_dict"]
    assert torch.equal(state["blocks.0.mlp_img.fc2.weight"], sd["encoder_vl.blocks.0.mlp_vis.fc2.weight"])
    assert torch.equal(state["blocks.0.mlp_txt.fc1.bias"], sd["encoder_vl.blocks.0.mlp_txt.fc1.bias"])
    assert torch.equal(state["visual_embed.type_embed"], sd["encoder_vl.type_embed"])
    assert torch.equal(state["text_embed.token_type_embeddings.weight"], sd["encoder_vl.embeddings.token_type_embeddings.weight"])
    path = tmp_path / "checkpoint_best.pth"
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)  # as processor.py:52 writes it, numpy score included
    cli.main(["eval", "ivt", "--profile", "official", "--checkpoint", str(path), "--data-root", str(smoke_root),
              "--set", *(f"{k}={v}" for k, v in SMALL_IVT.items())])
    assert '"R1"' in capsys.readouterr().out


def test_ivt_pretraining_checkpoint_starts_fine_tuning_as_the_code_does(tmp_path):
    """Released pre-training weights: its encoder fills the fine-tuning model by name; position and
    type tables of the stride-16 grid are skipped at stride 12, as load_pre_checkpoint's try/except."""
    shapes = ivt_official_shapes(**{**SMALL_IVT_SHAPES, "tokens": 1 + 4 * 2})  # stride 16 at 64x32
    shapes |= {"encoder_fusion.bert.embeddings.word_embeddings.weight": (30522, 32),
               "encoder_fusion.cls.predictions.bias": (30522,), "itm.weight": (2, 32), "itm.bias": (2,)}
    ckpt = {"state_dict": tensors(shapes), "epoch": 30}
    model = create_model("ivt", "official", **SMALL_IVT, **ivt_convert.BUILD_WITHOUT_INIT)
    state = ivt_convert.from_pretrain(ckpt, model)
    assert set(model.state_dict()) - set(state) == {"visual_embed.pos_embed", "visual_embed.type_embed"}
    path = tmp_path / "pretrain.pth"
    torch.save(ckpt, path)
    warm = create_model("ivt", "official", **SMALL_IVT, **{**ivt_convert.BUILD_WITHOUT_INIT, "pretrain": True,
                                                           "pretrain_checkpoint": str(path)})
    recipe("ivt").warm_start(warm, [])
    assert torch.equal(warm.state_dict()["blocks.0.attn.qkv.weight"], ckpt["state_dict"]["encoder_vl.blocks.0.attn.qkv.weight"])
    with pytest.raises(ValueError, match="unused official keys: encoder_vl.extra"):
        ckpt["state_dict"]["encoder_vl.extra.weight"] = torch.zeros(1)
        ivt_convert.from_pretrain(ckpt, model)
