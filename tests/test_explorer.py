"""The explorer retrieves like the evaluator, explains each paper's model with that model's own
internals, loads models from checkpoints and drives its widget headless."""
import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from tbpr import experiments  # noqa: E402
from tbpr.data.formats import load  # noqa: E402
from tbpr.engine import save_checkpoint  # noqa: E402
from tbpr.explorer import (SENTENCE, Explorer, _token_index, explain, token_map,  # noqa: E402
                           word_ablation_saliency)
from tbpr.papers import get_config, recipe  # noqa: E402

import toymodel  # noqa: E402

PAPERS = ("mia", "ssan", "lgur", "ivt", "cada")
KIND = {"mia": "MIA BFM", "ssan": "SSAN WAM", "lgur": "LGUR dictionary", "ivt": "IVT cos", "cada": "CADA decoder"}


@pytest.fixture(autouse=True)
def _toy(monkeypatch):
    toymodel.install(monkeypatch)  # serves model "toy"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _explorer(smoke_root):
    model = experiments.run("toy", "paper", data_root=smoke_root, progress=False).load_model()
    return Explorer({"toy": model}, load("synthpedes", smoke_root, verbose=False)["test"]), model


@pytest.fixture(scope="module")
def records(smoke_root):
    return load("synthpedes", smoke_root, verbose=False)


@pytest.fixture(scope="module")
def papers(records):
    """The five models, untrained, at the smoke profile, over the smoke test split."""
    torch.manual_seed(0)
    models = {n: experiments.build_model(n, get_config(n, "smoke"), records["train"]) for n in PAPERS}
    return Explorer(models, records["test"])


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
    assert explain(model, "a man in a red jacket", images[0])["kind"] == "word-ablation saliency"


@pytest.mark.parametrize("name", PAPERS)
def test_each_paper_explains_with_its_own_internals(papers, name):
    images, _ = papers.gallery(name)
    caption = "A woman with long brown hair wears a dark red jacket and black shorts, carrying a bag."
    own = recipe(name).explain(papers.models[name], caption, images[0])  # every paper has its own
    assert isinstance(own, dict) and own["kind"].startswith(KIND[name])
    exp = explain(papers.models[name], caption, images[0])
    assert exp["tokens"] == own["tokens"] and torch.allclose(exp["maps"], own["maps"])
    maps = exp["maps"]
    assert exp["kind"].startswith(KIND[name])
    assert maps.ndim == 3 and len(maps) == len(exp["tokens"]) > 0 and torch.isfinite(maps).all()
    for word in ("red", "jacket", "dark red jacket"):  # a word, a noun, a phrase
        assert token_map(exp, word).shape == maps.shape[1:]
    if name in ("ssan", "mia"):  # horizontal stripes, one per part
        assert maps.shape[1:] == (papers.models[name].cfg.num_parts, 1)
    if name == "ssan":  # WAM sigmoids, also as bars; the words WAM sees
        assert exp["bars"].shape == maps.shape[:2] and ((0 < exp["bars"]) & (exp["bars"] < 1)).all()
        assert exp["tokens"][:3] == ["a", "woman", "with"]
    if name == "mia":  # RGA of the sentence, then BFM weights of each noun phrase: softmax over parts
        assert exp["tokens"][0] == SENTENCE and "dark red jacket" in exp["tokens"]
        assert torch.allclose(maps.sum((1, 2)), torch.ones(len(maps)))
    if name == "lgur":  # patch grid, and the foreground mask on it
        assert exp["mask"].shape == maps.shape[1:] and ((exp["mask"] > 0) & (exp["mask"] < 1)).all()
    if name == "ivt":  # words and the word-level attribute phrases of MLA; cosines
        assert "dark red jacket" in exp["tokens"] and maps.abs().max() <= 1 + 1e-5
    if name == "cada":  # cross-attention renormalised over the patches, per word and chunk
        assert "dark red jacket" in exp["tokens"]
        assert torch.allclose(maps.sum((1, 2)), torch.ones(len(maps)), atol=1e-4)
    if name in ("mia", "lgur", "ivt", "cada"):  # these depend on the image, SSAN's WAM does not
        assert not torch.allclose(explain(papers.models[name], caption, images[1])["maps"], maps)


def test_a_configuration_without_the_explained_module_falls_back_to_saliency(records):
    model = experiments.build_model("ssan", get_config("ssan", "smoke", {"use_pfl": False, "mvnln": "none"}),
                                    records["train"]).eval()
    explorer = Explorer({"ssan w/o PFL": model}, records["test"])
    images, _ = explorer.gallery("ssan w/o PFL")
    assert explain(model, "a red jacket", images[0])["kind"] == "word-ablation saliency"


@pytest.mark.parametrize("name", PAPERS)
def test_figure_draws_the_models_map_and_marks_true_matches(papers, name):
    caption = papers.eval_set.captions[0]
    fig = papers.figure(name, caption, k=3, word="jacket")
    shown = papers.last
    assert shown["kind"].startswith(KIND[name]) and len(shown["results"]) == 3
    pid = int(papers.eval_set.caption_pids[0])
    assert [r["match"] for r in shown["results"]] == [r["pid"] == pid for r in shown["results"]]
    assert len(fig.axes) == 3 + (name == "ssan")  # SSAN adds the WAM bars of the word
    papers.figure(name, "somebody in a jacket", k=2)
    assert papers.last["kind"] == "" and {r["match"] for r in papers.last["results"]} == {None}


def test_figure_and_widget_build_headless(smoke_root):
    explorer, _ = _explorer(smoke_root)
    fig = explorer.figure("toy", explorer.eval_set.captions[0], k=3, word=explorer.eval_set.captions[0].split()[1])
    assert len(fig.axes) == 3
    assert explorer.widget().children


def test_widget_callbacks_update_what_is_shown(papers):
    panel = papers.widget()
    c = papers.controls
    assert panel.children and papers.last["model"] == "mia" and papers.last["word"] is None
    first = papers.last["caption"]
    assert all(r["match"] is not None for r in papers.last["results"])  # a test caption: pid known

    c["model"].value = "ssan"
    assert papers.last["model"] == "ssan"
    assert list(c["word"].options[1:]) == papers.tokens("ssan", first)
    c["word"].value = c["word"].options[2]
    assert papers.last["word"] == c["word"].options[2] and papers.last["kind"].startswith(KIND["ssan"])

    c["k"].value = 2
    assert len(papers.last["results"]) == 2

    c["example"].value = c["example"].options[3]
    assert c["query"].value == c["example"].options[3] == papers.last["caption"] != first

    c["query"].value = "a man in a dark red jacket"
    assert papers.last["caption"] == "a man in a dark red jacket"
    assert {r["match"] for r in papers.last["results"]} == {None}  # free text: no true match known
    c["model"].value = "mia"  # the word list follows the model: MIA explains phrases
    assert "dark red jacket" in c["word"].options and SENTENCE in c["word"].options
    c["word"].value = "dark red jacket"
    assert papers.last["kind"].startswith(KIND["mia"]) and papers.last["results"][0]["map"] is not None

    c["query"].value = "   "
    assert c["word"].options == ("(none)",) and papers.last["caption"] == "a man in a dark red jacket"


def test_from_checkpoints_rebuilds_the_models(papers, smoke_root, tmp_path):
    save_checkpoint(papers.models["ssan"], tmp_path / "ssan" / "model.safetensors")
    toy, _ = _explorer(smoke_root)
    toy_run = experiments.run("toy", "paper", data_root=smoke_root, progress=False).run_dir
    loaded = Explorer.from_checkpoints({"ssan": tmp_path / "ssan",  # a run folder
                                        "toy": f"{toy_run}/model.safetensors"}, data_root=smoke_root)
    caption = papers.eval_set.captions[5]
    for name, reference in (("ssan", papers), ("toy", toy)):
        assert torch.allclose(loaded.search(name, caption, 4)[1], reference.search(name, caption, 4)[1])
    assert explain(loaded.models["ssan"], caption, loaded.gallery("ssan")[0][0])["kind"].startswith(KIND["ssan"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Explorer.from_checkpoints({"x": tmp_path / "missing.safetensors"}, data_root=smoke_root)


def test_token_lookup_handles_wordpieces_and_phrases():
    assert _token_index(["a", "back", "##pack"], "backpack") == 1
    assert _token_index(["A", "Red,"], "red") == 1
    assert _token_index([SENTENCE, "long hair", "dark red bag"], "red") == 2  # the phrase holding it
    exp = {"tokens": ["a", "dark", "red", "bag"], "maps": torch.arange(4.0)[:, None, None]}
    assert token_map(exp, "dark red bag").item() == 2.0  # a phrase: the mean of its words
    with pytest.raises(ValueError, match="not among"):
        _token_index(["a", "bag"], "shoes")
