"""Every model at its paper profile (the sizes a GPU run uses, hub weights switched off because
nothing can be downloaded here) takes one training step on a real batch at the paper's input size
and encodes both modalities: the GPU path runs end to end, only the scale changes."""
import dataclasses

import pytest
import torch

from tbpr import experiments
from tbpr.data.datasets import build_train_loader
from tbpr.papers import get_config, recipe

OFFLINE = {
    "ssan": {"pretrained": None},
    "mia": {"pretrained": None},
    "lgur": {"vision_pretrained": None, "text_pretrained": None},
    "ivt": {"pretrained_vit": None, "pretrained_bert": None, "pretrain": False},
    "cada": {"pretrained": None},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_paper_sized_model_trains_a_step_and_encodes(name, smoke_root):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    records = experiments.load_records("synthpedes", smoke_root)
    cfg = get_config(name, "paper", OFFLINE[name])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=4, num_instances=2,
                                                            num_workers=0))
    model = experiments.build_model(name, cfg, records["train"]).train()
    paper = recipe(name)
    paper.attach_training_data(model, records["train"])
    paper.enter_stage(model, paper.stages(model)[0][0])
    batch = next(iter(build_train_loader(records["train"], model.cfg.data, seed=0)))
    assert tuple(batch["images"].shape[-2:]) == tuple(cfg.data.image_size)

    loss = model(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    model.eval()
    with torch.no_grad():
        images = batch["images"].flatten(0, batch["images"].dim() - 4)[:2]
        scores = model.similarity(model.encode_texts(list(batch["captions"][:3])), model.encode_images(images))
    assert scores.shape == (3, 2) and torch.isfinite(scores).all()
