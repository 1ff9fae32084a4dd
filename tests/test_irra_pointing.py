"""IRR's figure check against SynthPedes regions (``irr_pointing``) and the shared pointing helpers
(``tbpr.synthpedes.pointing``, also CADA's Fig. 5 check): chance is the region's share of the
patches on a constructed label map, a peak inside the region is a hit and one outside is not, and
the check runs on the smoke benchmark with random weights."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from tbpr import experiments
from tbpr.papers import create_model
from tbpr.papers.irra.recipe import irr_pointing
from tbpr.synthpedes import REGIONS, GroundTruth, load_ground_truth
from tbpr.synthpedes.render import REGION_CODES, GTCaption, GTImage
from tbpr.synthpedes.pointing import PointingTally, patches_in_region

CAPTION = "a man in a red jacket and blue jeans"


def _labels_top_third_upper() -> np.ndarray:
    """A 384×128 label map: the top third 'upper', the rest 'lower'."""
    labels = np.full((384, 128), REGION_CODES["lower"], dtype=np.uint8)
    labels[:128] = REGION_CODES["upper"]
    return labels


def _constructed_truth(file_path: str) -> GroundTruth:
    """One image whose 'upper' is its top third, one caption naming 'red jacket' (upper)."""
    image = GTImage(file_path=file_path, id=0, family=0, view="front",
                    regions={"upper": (0, 0, 128, 128), "lower": (0, 128, 128, 384)}, label_path=None)
    image.labels = _labels_top_third_upper()  # cached_property: set instead of read from a file
    start = CAPTION.index("red jacket")
    caption = GTCaption(text=CAPTION, attributes=[(start, start + len("red jacket"), "upper colour", "upper")],
                        noun_phrases=[], tokens=[], pos=[])
    return GroundTruth(images={file_path: image}, captions={(file_path, 0): caption}, identities={})


def test_region_patches_and_chance_on_a_constructed_label_map():
    image = GTImage(file_path="x", id=0, family=0, view="front", regions={}, label_path=None)
    image.labels = _labels_top_third_upper()
    inside = patches_in_region(image, "upper", (6, 2))  # patch centres at rows 32, 96, 160, ...
    assert inside.tolist() == [[True, True], [True, True]] + [[False, False]] * 4
    tally = PointingTally()
    peak_inside, peak_outside = torch.zeros(6, 2), torch.zeros(6, 2)
    peak_inside[1, 0], peak_outside[4, 1] = 1.0, 1.0
    assert tally.add(peak_inside, inside, "upper") is True
    assert tally.add(peak_outside, inside, "upper") is False
    assert tally.add(peak_inside, torch.zeros(6, 2, dtype=torch.bool), "hat") is None  # no patch inside
    summary = tally.summary()
    assert summary["n_spans"] == 2 and summary["pointing_acc"] == 50.0
    assert summary["chance"] == pytest.approx(100 / 3)  # the region's area fraction
    assert summary["per_region"] == {"upper": 50.0}


@pytest.fixture(scope="module")
def smoke_model():
    torch.manual_seed(0)
    return create_model("irra", "smoke", vision_pretrained=None, text_pretrained=None).eval()


def _force_peak(model, monkeypatch, row: int):
    """Make the interaction encoder's cross-attention peak at patch row ``row`` (column 0)."""
    real = model.predict_masked

    def peaked(masked_ids, image_tokens, need_weights=False, positions=None):
        logits, attn = real(masked_ids, image_tokens, need_weights=need_weights, positions=positions)
        grid = model.image_encoder.patch_embed.grid_size
        attn = torch.full_like(attn, 0.01)
        attn[:, :, 1 + row * grid[1]] = 0.5
        return logits, attn
    monkeypatch.setattr(model, "predict_masked", peaked)


@pytest.mark.parametrize("row, expected", [(0, 100.0), (5, 0.0)])
def test_irr_pointing_scores_the_masked_spans_peak_against_its_region(smoke_root, smoke_model, monkeypatch,
                                                                      row, expected):
    record = experiments.load_records("synthpedes", smoke_root)["test"][0]
    record = replace(record, captions=[CAPTION])
    _force_peak(smoke_model, monkeypatch, row)
    out = irr_pointing(smoke_model, [record], _constructed_truth(record.file_path), smoke_model.cfg.data)
    grid = smoke_model.image_encoder.patch_embed.grid_size
    assert grid == (6, 2)
    assert out["n_spans"] == 1 and out["pointing_acc"] == expected
    assert out["chance"] == pytest.approx(100 / 3)


def test_irr_pointing_on_the_smoke_benchmark_with_random_weights(smoke_root, smoke_model):
    records = experiments.load_records("synthpedes", smoke_root)["test"]
    out = irr_pointing(smoke_model, records, load_ground_truth(smoke_root), smoke_model.cfg.data, limit=30)
    assert out["n_spans"] > 10
    assert 0 <= out["pointing_acc"] <= 100 and 0 < out["chance"] < 100
    assert set(out["per_region"]) <= set(REGIONS) | {"person"}  # "person": age, gender, build


def test_irr_pointing_needs_irr(smoke_model):
    no_irr = create_model("irra", "smoke", losses=("sdm", "id"), vision_pretrained=None, text_pretrained=None)
    with pytest.raises(ValueError, match="add 'mlm'"):
        irr_pointing(no_irr, [], None, no_irr.cfg.data)
