"""The explorer retrieves like the evaluator and draws word maps headless."""
import matplotlib
import torch

matplotlib.use("Agg")

from tbpr import experiments  # noqa: E402
from tbpr.data.formats import load  # noqa: E402
from tbpr.explorer import Explorer, _token_index, word_ablation_saliency  # noqa: E402

import toymodel  # noqa: E402,F401


def _explorer(smoke_root):
    model = experiments.run("toy", "paper", data_root=smoke_root, progress=False).load_model()
    return Explorer({"toy": model}, load("synthpedes", smoke_root, verbose=False)["test"]), model


def test_search_returns_the_best_scoring_gallery_images(smoke_root):
    explorer, model = _explorer(smoke_root)
    caption = explorer.eval_set.captions[0]
    index, scores = explorer.search("toy", caption, k=3)
    _, feats = explorer.gallery("toy")
    with torch.no_grad():
        full = model.similarity(model.encode_texts([caption]), feats)[0]
    assert torch.allclose(scores, full.sort(descending=True).values[:3])
    assert torch.equal(full[index], scores)


def test_word_ablation_saliency_gives_one_map_per_word(smoke_root):
    explorer, model = _explorer(smoke_root)
    images, _ = explorer.gallery("toy")
    out = word_ablation_saliency(model, "a man in a red jacket", images[0])
    assert out["tokens"] == "a man in a red jacket".split()
    assert out["maps"].shape == (6, *images.shape[-2:]) and (out["maps"] >= 0).all()


def test_figure_and_widget_build_headless(smoke_root):
    explorer, _ = _explorer(smoke_root)
    fig = explorer.figure("toy", explorer.eval_set.captions[0], k=3, word=explorer.eval_set.captions[0].split()[1])
    assert len(fig.axes) == 3
    assert explorer.widget().children


def test_token_lookup_handles_wordpieces():
    assert _token_index(["a", "back", "##pack"], "backpack") == 1
    assert _token_index(["A", "Red,"], "red") == 1
