"""Plots and tables for the notebooks: heat maps, WAM bars, retrieval grids, curves, ablation tables,
and the side-by-side comparison of notebook 07 (``tbpr.viz.comparison``)."""
from . import comparison
from .figures import (overlay_heatmap, plot_history, retrieval_grid, save_figure, stripe_bars,
                      to_display_image, upsample_heat)
from .tables import ablation_table, save_table, to_markdown, verdicts, versus_chance

__all__ = ["ablation_table", "comparison", "overlay_heatmap", "plot_history", "retrieval_grid",
           "save_figure", "save_table", "stripe_bars", "to_display_image", "to_markdown",
           "upsample_heat", "verdicts", "versus_chance"]
