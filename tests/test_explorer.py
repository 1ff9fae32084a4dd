"""The explorer retrieves like the evaluator, explains each paper's model with that model's own
internals, loads models from checkpoints and drives its widget headless."""
import shutil

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from tbpr import experiments  # noqa: E402
from tbpr.data.formats import load  # noqa: E402
from tbpr.engine import save_checkpoint  # noqa: E402
from tbpr.explorer import (SENTENCE, Explorer, _heat, _token_index, explain, token_map,  # noqa: E402
                           unknown_words, word_ablation_saliency, word_choices)
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
    truth = min(len(shown["truth"]), 3)  # a row of the true person's images (as many as the columns)
    colour_bar = any(r["map"] is not None for r in shown["results"])
    assert len(fig.axes) == 3 + truth + colour_bar + (name == "ssan")  # SSAN adds the WAM bars of the word
    papers.figure(name, "somebody in a jacket", k=2)
    assert papers.last["kind"] == "" and {r["match"] for r in papers.last["results"]} == {None}


def test_figure_and_widget_build_headless(smoke_root):
    explorer, _ = _explorer(smoke_root)
    fig = explorer.figure("toy", explorer.eval_set.captions[0], k=3, word=explorer.eval_set.captions[0].split()[1])
    assert len(fig.axes) == 3 + min(len(explorer.last["truth"]), 3) + 1  # results, true person, colour bar
    assert explorer.widget().children


def test_widget_callbacks_update_what_is_shown(papers):
    panel = papers.widget()
    c = papers.controls
    assert panel.children and papers.last["model"] == "mia" and papers.last["word"] is None
    first = papers.last["caption"]
    assert all(r["match"] is not None for r in papers.last["results"])  # a test caption: pid known

    c["model"].value = "ssan"
    assert papers.last["model"] == "ssan"
    assert [v for _, v in c["word"].options[1:]] == word_choices(papers.tokens("ssan", first))
    c["word"].value = c["word"].options[2][1]
    assert papers.last["word"] == c["word"].options[2][1] and papers.last["kind"].startswith(KIND["ssan"])

    c["k"].value = 2
    assert len(papers.last["results"]) == 2

    c["example"].value = c["example"].options[3]
    assert c["query"].value == c["example"].options[3] == papers.last["caption"] != first

    c["query"].value = "a man in a dark red jacket"
    assert papers.last["caption"] == "a man in a dark red jacket"
    assert {r["match"] for r in papers.last["results"]} == {None}  # free text: no true match known
    c["model"].value = "mia"  # the word list follows the model: MIA explains phrases
    assert {"dark red jacket", SENTENCE} <= {v for _, v in c["word"].options}
    c["word"].value = "dark red jacket"
    assert papers.last["kind"].startswith(KIND["mia"]) and papers.last["results"][0]["map"] is not None

    c["query"].value = "   "
    assert c["word"].options == (("(none)", ""),) and papers.last == {}


def test_from_checkpoints_rebuilds_the_models(papers, smoke_root, tmp_path):
    save_checkpoint(papers.models["ssan"], tmp_path / "ssan" / "model.safetensors")
    toy, _ = _explorer(smoke_root)
    toy_run = experiments.run("toy", "paper", data_root=smoke_root, progress=False).run_dir
    loaded = Explorer.from_checkpoints({"ssan": tmp_path / "ssan",  # a run folder
                                        "toy": f"{toy_run}/model.safetensors"}, data_root=smoke_root)
    caption = papers.eval_set.captions[5]
    assert loaded.models.loaded == [] and list(loaded.models) == ["ssan", "toy"]  # built when first shown
    assert loaded.search("toy", caption, 4) and loaded.models.loaded == ["toy"]
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


# ----------------------------------------------------------------------------- the widget (issue 24)
def _caption_with(explorer, word, exclude=()):
    return next(c for c in dict.fromkeys(explorer.eval_set.captions)
                if word in c.lower().split() and c not in exclude)


def test_widget_searches_on_enter_or_the_button_not_on_every_keystroke(smoke_root):
    explorer, _ = _explorer(smoke_root)
    explorer.widget()
    c = explorer.controls
    assert c["query"].continuous_update is False and c["k"].continuous_update is False  # Enter, not keys
    assert "\n" not in c["query"].value and not hasattr(c["query"], "rows")  # one line: Enter submits
    searches, redraws = explorer.searches, explorer.redraws
    c["search"].click()
    assert (explorer.searches, explorer.redraws) == (searches + 1, redraws + 1)
    c["query"].value = "a man in a red jacket"  # what the browser sends on Enter
    assert explorer.searches == searches + 2 and explorer.last["caption"] == "a man in a red jacket"
    c["word"].value = "jacket"  # a new map, the same ranking
    assert explorer.searches == searches + 2 and explorer.redraws == redraws + 3
    assert "answered in" in explorer.panels["info"].value


def test_a_test_caption_shows_the_true_person_and_its_rank(smoke_root):
    explorer, model = _explorer(smoke_root)
    es = explorer.eval_set
    _, feats = explorer.gallery("toy")
    missed = found = None
    for q, caption in enumerate(es.captions):
        with torch.no_grad():
            scores = model.similarity(model.encode_texts([caption]), feats)[0]
        true = (es.image_pids == es.caption_pids[q]).nonzero().flatten().tolist()
        ranks = sorted(int((scores > scores[i]).sum()) + 1 for i in true)  # no ties in these scores
        truth = explorer.truth("toy", caption, k=3)
        assert [t["rank"] for t in truth] == ranks and {t["index"] for t in truth} == set(true)
        if ranks[0] > 3 and missed is None:
            missed = caption
        if ranks[0] <= 3 and found is None:
            found = caption
    fig = explorer.figure("toy", missed, k=3)
    assert "not in top-3" in fig._suptitle.get_text() and not any(r["match"] for r in explorer.last["results"])
    assert explorer.last["truth"][0]["in_top_k"] is False
    panel_titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith(f"rank {explorer.last['truth'][0]['rank']}") and "not in top-3" in t for t in panel_titles)
    explorer.figure("toy", found, k=3)
    assert explorer.last["truth"][0]["in_top_k"] and any(r["match"] for r in explorer.last["results"])
    explorer.widget()
    explorer.controls["query"].value = missed
    assert "not in top-" in explorer.panels["info"].value and "true person id" in explorer.panels["info"].value
    assert explorer.truth("toy", "somebody in a jacket") is None  # free text: the person is unknown


def test_all_models_side_by_side_with_their_r1(papers, smoke_root):
    papers.widget()
    c = papers.controls
    query = papers.eval_set.captions[4]
    c["query"].value = query
    c["view"].value = "all"
    shown = papers.last
    assert shown["view"] == "all" and list(shown["models"]) == list(papers.models) and shown["caption"] == query
    for name, row in shown["models"].items():
        assert [r["index"] for r in row["results"]] == papers.search(name, query, c["k"].value)[0].tolist()
        assert row["R1"] == papers.r1(name) and row["truth"] == papers.truth(name, query, c["k"].value)
        assert f"<b>{name}</b> R@1 {row['R1']:.1f}" in papers.panels["info"].value
    c["k"].value = 7  # a second row of tiles per model, no re-ranking
    assert all(len(row["results"]) == 7 for row in papers.last["models"].values())
    assert c["enlarge"].layout.display == "none"  # enlarging is per model
    # R@1 as the evaluator computes it: the toy's run on the same test split
    toy, _ = _explorer(smoke_root)
    run = experiments.run("toy", "paper", data_root=smoke_root, progress=False)
    assert toy.r1("toy") == pytest.approx(run.metrics["R1"])


def test_clicking_a_result_enlarges_it_with_raw_image_overlay_and_colour_bar(papers):
    papers.widget()
    c = papers.controls
    c["model"].value = "lgur"
    c["word"].value = "jacket" if "jacket" in [v for _, v in c["word"].options] else c["word"].options[1][1]
    assert [v for _, v in c["enlarge"].options] == [r["index"] for r in papers.last["results"]]
    pick = c["enlarge"].options[2][1]
    c["enlarge"].value = pick
    big = papers.last["enlarged"]
    assert big["index"] == pick and big["rank"] == 3 and big["map"] is not None
    assert papers.panels["detail"].value[:4] == b"\x89PNG"  # drawn under the results
    fig = papers.detail_figure("lgur", papers.last["caption"], pick, c["word"].value)
    raw, overlay, bar = fig.axes
    assert len(raw.images) == 1 and len(overlay.images) == 2 and bar.get_ylabel().startswith("per image")
    c["shared"].value = True  # one colour scale: the enlarged view follows
    assert papers.last["enlarged"]["index"] == pick and papers.last["enlarged"]["scale"] == "one scale across images"


def test_one_colour_scale_across_images_is_an_option(papers):
    caption = papers.eval_set.captions[0]
    fig = papers.figure("lgur", caption, k=4, word="jacket")
    per_image = {ax.images[1].get_clim() for ax in fig.axes if len(ax.images) == 2}
    assert per_image == {(0.0, 1.0)}
    fig = papers.figure("lgur", caption, k=4, word="jacket", shared_scale=True)
    shared = {ax.images[1].get_clim() for ax in fig.axes if len(ax.images) == 2}
    size = papers.gallery("lgur")[0].shape[-2:]  # the scale covers the maps as drawn (upsampled)
    heats = [_heat(papers.explain("lgur", caption, r["index"]), "jacket", size) for r in papers.last["results"]]
    assert len(shared) == 1 and shared != {(0.0, 1.0)} and papers.last["shared_scale"]
    lo, hi = shared.pop()
    assert lo <= min(float(h.min()) for h in heats) + 1e-4 and hi >= max(float(h.max()) for h in heats) - 1e-4
    assert fig.axes[-1].get_ylabel() == "one scale across images"  # the colour bar says which


def test_word_list_is_deduplicated_without_non_words_and_marks_unknown_words(papers):
    assert word_choices(["a", "red", "A", "red jacket", "!!!", "red jacket", "##pack", SENTENCE]) == \
        ["a", "red", "red jacket", SENTENCE]
    papers.widget()
    c = papers.controls
    c["model"].value = "ivt"
    c["query"].value = "a man in a red jacket and a red jacket, zebra !!!"
    values = [v for _, v in c["word"].options]
    assert len(values) == len(set(values)) and "!!!" not in values and "a" in values and "red jacket" in values
    assert unknown_words(papers.models["ssan"], "a red zebra") == ["zebra"]
    c["model"].value = "ssan"
    labels = dict((v, label) for label, v in c["word"].options)
    assert "unknown to ssan" in labels["zebra"] and labels["jacket"] == "jacket"
    assert "ssan does not know: zebra" in papers.panels["info"].value


def test_chosen_word_survives_a_new_query_and_a_model_switch(papers):
    papers.widget()
    c = papers.controls
    c["model"].value = "ssan"
    first = _caption_with(papers, "jacket")
    c["query"].value = first
    c["word"].value = "jacket"
    c["query"].value = _caption_with(papers, "jacket", exclude=(first,))
    assert c["word"].value == "jacket" and papers.last["word"] == "jacket"
    c["model"].value = "cada"
    assert c["word"].value == "jacket" and papers.last["word"] == "jacket" and papers.last["model"] == "cada"
    c["model"].value = "ivt"
    c["query"].value = "a woman with a dark red jacket"
    c["word"].value = "dark red jacket"  # an IVT phrase; SSAN explains its words, averaged
    c["model"].value = "ssan"
    assert c["word"].value == "dark red jacket" and papers.last["results"][0]["map"] is not None
    c["query"].value = "a man in black shorts"  # gone from the query: back to no word
    assert c["word"].value == "" and papers.last["word"] is None


def test_clearing_the_query_leaves_no_stale_info(papers):
    papers.widget()
    c, p = papers.controls, papers.panels
    c["k"].value = 3
    ids = [str(r["pid"]) for r in papers.last["results"]]
    assert all(i in p["info"].value for i in ids)
    c["enlarge"].value = c["enlarge"].options[0][1]
    c["query"].value = ""
    assert not any(i in p["info"].value for i in ids) and "type a description" in p["info"].value
    assert p["results"].value == p["detail"].value == b"" and c["enlarge"].options == ()


def test_large_top_k_grows_the_figure_instead_of_shrinking_the_tiles(papers):
    caption = papers.eval_set.captions[0]
    small = papers.figure("ssan", caption, k=5, word="jacket")
    tile = small.axes[0].get_position().height * small.get_figheight()
    big = papers.figure("ssan", caption, k=10, word="jacket")
    assert big.get_figwidth() == pytest.approx(small.get_figwidth())  # same columns, more rows
    assert big.get_figheight() > small.get_figheight() + Explorer.TILE * 0.9
    assert big.axes[0].get_position().height * big.get_figheight() == pytest.approx(tile, rel=0.1)
    assert min(ax.title.get_fontsize() for ax in big.axes[:10]) >= 9


def test_explorer_takes_models_from_the_run_cache_or_a_folder(smoke_root, tmp_path):
    run = experiments.run("toy", "paper", data_root=smoke_root, progress=False)
    cached = Explorer.from_runs("paper", ["toy"], data_root=smoke_root)
    assert list(cached.models) == ["toy"] and cached.metrics["toy"]["R1"] == run.metrics["R1"]
    shipped = tmp_path / "shipped" / "toy"
    shipped.mkdir(parents=True)
    shutil.copy(f"{run.run_dir}/model.safetensors", shipped / "model.safetensors")
    (shipped / "metrics.json").write_text('{"R1": 12.5}')
    folder = Explorer.from_folder(tmp_path / "shipped", data_root=smoke_root)
    caption = folder.eval_set.captions[2]
    assert folder.metrics["toy"] == {"R1": 12.5}
    assert torch.equal(folder.search("toy", caption, 4)[0], cached.search("toy", caption, 4)[0])
    with pytest.warns(UserWarning, match="no trained ssan"):
        mixed = Explorer.from_runs("paper", ["toy", "ssan"], data_root=smoke_root)
    assert list(mixed.models) == ["toy"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Explorer.from_folder(tmp_path, data_root=smoke_root)
