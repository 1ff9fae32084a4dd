"""tbpr.viz on tiny inputs: files are written, tables hold the computed mean/std, images decode."""
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tbpr.viz import (ablation_table, overlay_heatmap, plot_history, retrieval_grid,  # noqa: E402
                      save_figure, save_table, stripe_bars, to_display_image, upsample_heat, versus_chance)

RUNS = {"baseline": [{"R1": 50.0, "R5": 70.0, "R10": 80.0, "mAP": 40.0, "mINP": 20.0},
                     {"R1": 52.0, "R5": 71.0, "R10": 81.5, "mAP": 41.0, "mINP": 21.0},
                     {"R1": 57.0, "R5": 73.0, "R10": 82.0, "mAP": 45.0, "mINP": 22.5}],
        "+ WAM": [{"R1": 60.0, "R5": 75.0, "R10": 85.0, "mAP": 50.0, "mINP": 30.0}]}
PAPER = {"baseline": {"R1": 55.1, "R10": 84.0}, "+ WAM": {"R1": 61.4}, "other method": {"R1": 58.0}}


def test_normalised_chw_tensor_is_unnormalised_to_hwc():
    rgb = np.random.default_rng(0).uniform(0, 1, (6, 4, 3))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    normalised = torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1))
    np.testing.assert_allclose(to_display_image(normalised), rgb, atol=1e-6)
    np.testing.assert_allclose(to_display_image((rgb * 255).astype(np.uint8)),
                               (rgb * 255).astype(np.uint8) / 255)


def test_heat_is_upsampled_bilinearly_to_image_size_and_rescaled():
    heat = np.array([[0.0, 1.0], [2.0, 3.0]])
    up = upsample_heat(heat, (8, 4))
    assert up.shape == (8, 4) and up.min() == 0 and up.max() == 1
    assert up[0, 0] < up[0, -1] < up[-1, -1]  # the gradient of the grid survives
    ref = torch.nn.functional.interpolate(torch.tensor(heat, dtype=torch.float32)[None, None], (8, 4),
                                          mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(up, (ref - ref.min()) / (ref.max() - ref.min()), atol=1e-6)


def test_overlay_heatmap_draws_image_and_heat(tmp_path):
    fig, ax = plt.subplots()
    overlay_heatmap(ax, torch.randn(3, 24, 8), torch.rand(6, 2), alpha=0.4)
    layers = ax.get_images()
    assert len(layers) == 2 and layers[1].get_alpha() == 0.4
    assert layers[1].get_array().shape == (24, 8)
    path = save_figure(fig, tmp_path / "a" / "overlay")
    assert path.name == "overlay.png" and plt.imread(path).shape[-1] == 4
    plt.close(fig)


def test_stripe_bars_stack_word_probabilities():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    fig, ax = plt.subplots()
    stripe_bars(ax, probs, ["shirt", "shoes"], ["head", "body", "legs"])
    widths = [p.get_width() for p in ax.patches]
    assert widths == pytest.approx(probs.T.reshape(-1))  # one bar per (stripe, word)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["shirt", "shoes"]
    with pytest.raises(ValueError, match="3 word labels"):
        stripe_bars(ax, probs, ["a", "b", "c"])
    plt.close(fig)


def test_retrieval_grid_borders_follow_matches(tmp_path):
    images = [torch.rand(3, 3, 12, 4), torch.rand(3, 3, 12, 4)]
    fig = retrieval_grid(["a man in red", "a woman"], images, [[True, False, True], [False] * 3],
                         row_labels=["SSAN", "LGUR"], scores=[[0.9, 0.5, 0.1]] * 2)
    axes = np.array(fig.axes).reshape(2, 4)
    colour = lambda ax: matplotlib.colors.to_hex(ax.spines["top"].get_edgecolor())
    assert [colour(ax) for ax in axes[0, 1:]] == ["#2ca02c", "#d62728", "#2ca02c"]
    assert "SSAN" in axes[0, 0].texts[0].get_text()
    save_figure(fig, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0
    with pytest.raises(ValueError, match="one of each per row"):
        retrieval_grid(["only one"], images, [[True] * 3] * 2)
    plt.close("all")


def test_plot_history_plots_each_loss_part_lr_and_r1():
    history = [{"epoch": 1, "loss": 3.0, "id_loss": 2.0, "lr": 1e-3, "images_per_s": 10.0},
               {"epoch": 2, "loss": 2.0, "id_loss": 1.5, "lr": 5e-4, "images_per_s": 11.0, "R1": 30.0,
                "mAP": 20.0},
               {"epoch": 3, "loss": 1.0, "id_loss": 0.5, "lr": 1e-4, "images_per_s": 12.0, "R1": 40.0,
                "mAP": 25.0}]
    fig = plot_history(history)
    loss_ax, lr_ax, r1_ax = fig.axes
    assert sorted(line.get_label() for line in loss_ax.lines) == ["id_loss", "loss"]
    assert list(lr_ax.lines[0].get_ydata()) == [1e-3, 5e-4, 1e-4]
    assert list(r1_ax.lines[0].get_xdata()) == [2, 3] and list(r1_ax.lines[0].get_ydata()) == [30, 40]
    with pytest.raises(KeyError, match="no \\['nope'\\]"):
        plot_history(history, keys=["nope"])
    plt.close("all")


def test_ablation_table_reports_mean_std_beside_paper():
    df = ablation_table(RUNS, PAPER)
    assert list(df.index) == ["baseline", "+ WAM", "other method"]
    r1 = [r["R1"] for r in RUNS["baseline"]]
    assert df.loc["baseline", "R1"] == f"{statistics.mean(r1):.2f} ± {statistics.stdev(r1):.2f}"
    assert df.attrs["mean"]["baseline"]["mAP"] == pytest.approx(statistics.mean([40, 41, 45]))
    assert df.attrs["std"]["baseline"]["mINP"] == pytest.approx(statistics.stdev([20, 21, 22.5]))
    assert df.loc["+ WAM", "R1"] == "60.00" and df.loc["+ WAM", "seeds"] == 1
    assert df.loc["baseline", "R1 (paper)"] == "55.10" and df.loc["+ WAM", "R10 (paper)"] == "-"
    assert df.loc["other method", "R1"] == "-" and "R5 (paper)" not in df.columns
    assert list(df.columns[:3]) == ["seeds", "R1", "R1 (paper)"]


def test_save_table_writes_csv_and_markdown(tmp_path):
    df = ablation_table(RUNS, PAPER, metrics=("R1", "mAP"))
    csv, md = save_table(df, tmp_path / "tables" / "ssan_table2")
    back = pd.read_csv(csv, index_col=0)
    assert list(back.index) == list(df.index) and back.loc["baseline", "R1"] == df.loc["baseline", "R1"]
    lines = md.read_text().splitlines()
    assert lines[0] == "| setting | seeds | R1 | R1 (paper) | mAP |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2].startswith("| baseline | 3 | 53.00 ± 3.61 | 55.10 |")
    assert len(lines) == 2 + len(df)


def test_versus_chance_separates_far_above_binomially_above_and_indistinguishable():
    # 714 queries at chance 1 %: one binomial standard error of a random ranking is 0.37 points
    assert versus_chance(5.6, 1.0, 714).startswith("far above chance (5.6×")
    assert versus_chance(3.1, 1.0, 714).startswith("above chance (3.1×, 6 binomial standard errors)")
    assert versus_chance(1.5, 1.0, 714) == "not distinguishable from chance"
    assert versus_chance(1.5, 1.0, 100_000).startswith("above chance")


def test_a_papers_verdict_table_compares_each_row_with_the_reference_and_is_saved(tmp_path):
    from tbpr import stats
    from tbpr.evaluate import QueryScores
    from tbpr.viz import verdicts

    rng = np.random.default_rng(0)

    def runs(p, seeds):
        return [QueryScores(np.arange(2000), {"R1": (rng.random(2000) < p).astype(np.uint8)}, "s")
                for _ in range(seeds)]

    rows = {"1 ITC (CLIP fine-tuned)": runs(0.10, 5), "2 SDM": runs(0.12, 3), "6 IRRA (SDM + IRR + ID)": runs(0.20, 5)}
    df, records = verdicts("irra", {"losses": rows}, tmp_path)
    headline, sdm = records
    assert headline["headline"] and headline["verdict"] == stats.REPRODUCES and headline["seeds"] == 5
    assert headline["paper_delta"] == pytest.approx(73.38 - 68.19)
    assert sdm["verdict"] == stats.NO_DIRECTION and sdm["seeds"] == 3  # README gives no number for SDM alone
    assert "6 IRRA (SDM + IRR + ID) vs 1 ITC (CLIP fine-tuned) ★" in df.index
    assert stats.read_records(tmp_path / "verdicts.json") == records and (tmp_path / "verdicts.md").exists()
    assert verdicts("irra", {"losses": {"2 SDM": rows["2 SDM"]}})[1] == []  # no reference row, no verdict
    with pytest.raises(KeyError, match="comparisons: reference has no row for table 'nope'"):
        verdicts("irra", {"nope": rows})
