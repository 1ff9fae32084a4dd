"""The benchmark's floor (BoW × colour-histogram CCA) and ceiling (attribute oracle)."""
import numpy as np

from tbpr.synthpedes import baseline


def test_cca_aligns_linearly_related_views():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    y = x @ rng.normal(size=(6, 9)) + 0.01 * rng.normal(size=(300, 9))
    text_proj, image_proj = baseline.fit_cca(x, y, dim=6, reg=1e-6)
    zx, zy = baseline._project(x, text_proj), baseline._project(y, image_proj)
    assert np.mean(np.sum(zx * zy, axis=1)) > .99
    assert (np.argmax(zx @ zy.T, axis=1) == np.arange(300)).mean() > .95


def test_floor_and_ceiling_bracket_chance_on_smoke(smoke_root):
    metrics = baseline.baseline_rank1(smoke_root)
    assert 0 <= metrics["R1"] <= metrics["R5"] <= metrics["R10"] <= 100
    ceiling = baseline.text_oracle_rank1(smoke_root)
    chance = 100 / 20  # smoke has 20 test identities
    assert chance < ceiling < 100  # captions never pin down every family member
