"""evaluate / encode_split through the model contract, on a tiny split of solid-colour images."""
import numpy as np
import pytest
import torch
from PIL import Image

from tbpr.config import DataConfig
from tbpr.data.datasets import load_eval_images
from tbpr.data.formats import Record
from tbpr.evaluate import encode_split, evaluate, retrieval_metrics
from tbpr.papers.base import TBPRModel

from test_evaluate import reference_metrics

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "grey": (128, 128, 128),
           "yellow": (230, 220, 30)}
DATA = DataConfig(image_size=(16, 8))


class ColourModel(TBPRModel):
    """Images -> mean colour (normalised space); captions -> the named colour. Features are dicts,
    so the evaluator has to concatenate and slice them."""

    reranks = True

    def __init__(self):
        super().__init__(cfg=None)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.seen_modes = set()
        self.rerank_calls = 0

    def _record_mode(self):
        self.seen_modes.add((self.training, torch.is_grad_enabled()))

    def encode_images(self, images):
        self._record_mode()
        return {"colour": images.mean((2, 3)) * self.scale, "index": torch.zeros(len(images), 1)}

    def encode_texts(self, captions):
        self._record_mode()
        rgb = torch.tensor([COLOURS[c.split()[-1]] for c in captions], dtype=torch.float32) / 255
        mean, std = torch.tensor(DATA.mean), torch.tensor(DATA.std)
        return {"colour": (rgb - mean) / std, "index": torch.zeros(len(captions), 1)}

    def similarity(self, text_feats, image_feats):
        return -torch.cdist(text_feats["colour"], image_feats["colour"]).round(decimals=3)

    def rerank(self, text_feats, image_feats, topk_index):
        # reverses the first-stage order of the top k: only right if text rows match query_idx
        self.rerank_calls += 1
        sim = self.similarity(text_feats, image_feats)
        return -sim.gather(1, topk_index)


@pytest.fixture
def split(tmp_path):
    """12 images of 6 ids (5 colours: two ids share "grey"), 2 captions each; one image is noisy."""
    rng = np.random.default_rng(0)
    names = list(COLOURS) + ["grey"]
    records = []
    for i in range(12):
        pid = i // 2
        colour = np.array(COLOURS[names[pid]]) + rng.integers(-20, 20, 3) * (i == 5)
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((32, 16, 3), np.clip(colour, 0, 255), np.uint8)).save(path)
        captions = [f"a person in {names[pid]}", f"someone wearing {names[pid]}"]
        records.append(Record(pid=100 + pid, image_path=path, captions=captions, file_path=path.name,
                              orig_id=pid))
    return records


def reference_similarity(model, records):
    images = load_eval_images([r.image_path for r in records], DATA)
    captions = [c for r in records for c in r.captions]
    with torch.no_grad():
        return model.similarity(model.encode_texts(captions), model.encode_images(images)).numpy()


def test_encode_split_concatenates_dict_features_in_eval_order(split):
    model = ColourModel()
    text, image, eval_set = encode_split(model, split, DATA, batch_size=5, progress=False)
    assert text["colour"].shape == (24, 3) and image["colour"].shape == (12, 3)
    whole = load_eval_images(eval_set.image_paths, DATA).mean((2, 3))
    torch.testing.assert_close(image["colour"], whole)
    assert model.seen_modes == {(False, False)} and model.training  # eval + no_grad, mode restored


@pytest.mark.parametrize("chunk", [1, 7, 24])
def test_evaluate_equals_metrics_of_the_full_similarity(split, chunk):
    model = ColourModel()
    model.eval()
    got = evaluate(model, split, DATA, batch_size=4, progress=False, chunk_size=chunk)
    assert not model.training  # the mode it had before
    sim = reference_similarity(model, split)
    qids = np.repeat([r.pid for r in split], 2)
    gids = np.array([r.pid for r in split])
    source = np.repeat(np.arange(12), 2)
    want = reference_metrics(sim, qids, gids, source=source)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert got["R1"] < 100  # the two grey identities are confused


@pytest.mark.parametrize("k", [2, 5])
def test_evaluate_reranks_top_k_with_the_query_rows(split, k):
    model = ColourModel()
    got = evaluate(model, split, DATA, rerank_k=k, progress=False, chunk_size=10)
    sim = reference_similarity(model, split)
    qids, gids = np.repeat([r.pid for r in split], 2), np.array([r.pid for r in split])
    want = reference_metrics(sim, qids, gids, rerank=lambda q: {j: -sim[q][j] for j in range(12)}, k=k)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert model.rerank_calls == 3
    if k == 5:  # reversing 5 moves both positives of a query away from the top
        assert got["R1"] < retrieval_metrics(sim, qids, gids)["R1"]


def test_rerank_needs_a_model_with_rerank(split):
    model = ColourModel()
    model.reranks = False  # a model that does not re-score a top-k says so
    with pytest.raises(ValueError, match="does not re-rank"):
        evaluate(model, split, DATA, rerank_k=3, progress=False)
    assert model.rerank_calls == 0
