"""figures/summary.md and the README's results section are gathered from what the notebooks wrote."""
import json
from pathlib import Path

import pytest

from tbpr import reproduce, stats, summary


def _figures(tmp_path):
    figs = tmp_path / "figures"
    (figs / "ssan").mkdir(parents=True)
    (figs / "ssan" / "conclusions.md").write_text("- SSAN reaches R1 12.3 here.\n")
    (figs / "ssan" / "table2.md").write_text("| row | R1 | R1 (paper) |\n|---|---|---|\n| SSAN | 12.3 | 61.37 |\n")
    (figs / "ssan" / "fig8_wam.png").write_bytes(b"png")
    (figs / "comparison").mkdir()
    (figs / "comparison" / "comparison.md").write_text("| method | R1 |\n|---|---|\n| SSAN | 12.3 |\n")
    return figs


def test_summary_holds_every_table_conclusion_and_figure(tmp_path):
    text = summary.write_summary(_figures(tmp_path)).read_text()
    assert "## 02 · SSAN" in text and "SSAN reaches R1 12.3 here." in text
    assert "| SSAN | 12.3 | 61.37 |" in text and "![fig8_wam](ssan/fig8_wam.png)" in text
    assert text.index("02 · SSAN") < text.index("07 · Side-by-side comparison")


def _verdicts(figs):
    """Smoke-sized fake verdicts of two papers, written as their notebooks write them."""
    def comparison(delta, low, high, paper_delta, seeds=3):
        return stats.Comparison("R1", delta, low, high, paper_delta, stats.verdict(low, high, paper_delta), seeds, 714)

    stats.write_records([stats.record("ssan", "table2", "Baseline", "SSAN", comparison(3.1, 1.2, 5.0, 6.69, 5),
                                      headline=True),
                         stats.record("ssan", "table2", "+PFL", "SSAN", comparison(-0.4, -2.0, 1.1, 2.11)),
                         stats.record("ssan", "fig7", "fixed 0.10", "adaptive", comparison(0.2, -1.0, 1.5, None))],
                        figs / "ssan" / "verdicts.json")
    (figs / "mia").mkdir(exist_ok=True)
    stats.write_records([stats.record("mia", "table2_ablation", "GC", "MIA", comparison(-2.0, -3.5, -0.6, 4.6, 5),
                                      headline=True)], figs / "mia" / "verdicts.json")


def test_one_verdict_table_for_the_whole_reproduction_with_counts_per_paper(tmp_path):
    figs = _figures(tmp_path)
    _verdicts(figs)
    text = summary.write_summary(figs).read_text()
    assert text.index("## Verdicts") < text.index("## 01 · MIA") < text.index("## 02 · SSAN")
    counts = text[text.index("| paper | headline"):]
    assert "| mia | opposite (-2.0 [-3.5, -0.6], paper +4.60) | 0 | 0 | 1 | 0 |" in counts
    assert "| ssan | reproduces (+3.1 [+1.2, +5.0], paper +6.69) | 1 | 1 | 0 | 1 |" in counts
    assert "| **all** | – | 1 | 1 | 1 | 1 |" in counts
    assert "| ssan | table2 | SSAN vs Baseline ★ | +6.69 | +3.10 [+1.20, +5.00] | 5 | reproduces |" in text
    assert "| ssan | fig7 | adaptive vs fixed 0.10 | – |" in text
    readme = summary.readme_results(figs)
    assert "| **all** | – | 1 | 1 | 1 | 1 |" in readme and "<details><summary>Every row (4)</summary>" in readme
    assert stats.method_note() in readme


def test_summary_without_verdicts_has_no_verdict_section(tmp_path):
    assert "## Verdicts" not in summary.write_summary(_figures(tmp_path)).read_text()


def test_summary_without_outputs_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="tbpr reproduce"):
        summary.write_summary(tmp_path)


def test_readme_results_section_is_replaced_between_markers_only(tmp_path):
    figs = _figures(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# intro\n{summary.README_BEGIN}\nold numbers\n{summary.README_END}\n## after\n")
    text = summary.update_readme(readme, figs).read_text()
    assert "old numbers" not in text and text.startswith("# intro\n") and text.endswith("## after\n")
    assert "| SSAN | 12.3 |" in text and "SSAN reaches R1 12.3 here." in text
    assert summary.update_readme(readme, figs).read_text() == text  # idempotent


def test_readme_without_markers_is_a_clear_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="results markers"):
        summary.update_readme(readme, _figures(tmp_path))


def test_reproduce_skips_a_notebook_executed_at_the_same_profile_after_its_last_change(tmp_path):
    nb, executed = tmp_path / "01_x.ipynb", tmp_path / "executed.ipynb"
    nb.write_text("{}")
    meta = {"metadata": {"papermill": {"parameters": {"profile": "quick"}, "exception": None},
                         "tbpr": {"code_version": "abc"}}}
    executed.write_text(json.dumps(meta))
    assert reproduce._already_done(nb, executed, "quick", version="abc")
    assert not reproduce._already_done(nb, executed, "smoke", version="abc")
    meta["metadata"]["papermill"]["exception"] = True
    executed.write_text(json.dumps(meta))
    assert not reproduce._already_done(nb, executed, "quick", version="abc")


def test_reproduce_re_executes_a_notebook_whose_library_code_changed_since(tmp_path):
    nb, executed = tmp_path / "04_ivt.ipynb", tmp_path / "executed.ipynb"
    nb.write_text("{}")
    executed.write_text(json.dumps({"metadata": {"papermill": {"parameters": {"profile": "quick"}}}}))
    reproduce._stamp_code_version(executed, "old")
    assert reproduce._already_done(nb, executed, "quick", version="old")
    assert not reproduce._already_done(nb, executed, "quick", version="new")


def test_comparison_notebooks_depend_on_every_model_and_paper_notebooks_on_their_own(monkeypatch):
    versions = {m: m[:3] for m in ("mia", "ssan", "lgur", "ivt", "cada")}
    monkeypatch.setattr(reproduce, "code_version", lambda model=None: versions.get(model, "lib"))
    assert reproduce.notebook_code_version("04_ivt") == "ivt"
    before = reproduce.notebook_code_version("07_comparison")
    versions["cada"] = "new"
    assert reproduce.notebook_code_version("07_comparison") != before
    assert reproduce.notebook_code_version("04_ivt") == "ivt"


def test_the_repository_readme_has_the_generated_results_section():
    text = (reproduce.REPO / "README.md").read_text()
    assert summary.README_BEGIN in text and summary.README_END in text


def test_reproduce_at_large_runs_the_paper_profile_and_leaves_the_quick_figures_alone(tmp_path, monkeypatch):
    import papermill
    (tmp_path / "00_x.ipynb").write_text("{}")
    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda src, dst, parameters, **kw: (
        calls.append((dst, parameters)), Path(dst).write_text(json.dumps({"cells": [], "metadata": {}}))))
    monkeypatch.setattr(reproduce, "REPO", tmp_path)
    monkeypatch.setattr(reproduce, "_write_provenance", lambda *a: None)
    monkeypatch.setattr(reproduce, "write_summary", lambda figures_dir: figures_dir / "summary.md")
    reproduce.run_notebooks("large", notebook_dir=tmp_path, device="cuda")
    (dst, params), = calls
    assert params["profile"] == "paper" and params["device"] == "cuda"
    assert params["out_dir"] == str(tmp_path / "figures" / "large")
    assert dst == str(tmp_path / "executed" / "large" / "00_x.ipynb")
    assert reproduce.figures_dir_for("quick") == tmp_path / "figures"


def test_provenance_counts_trained_evaluated_and_cached_runs_apart(tmp_path, monkeypatch):
    import os

    import papermill
    from tbpr import experiments
    (tmp_path / "01_x.ipynb").write_text("{}")
    (tmp_path / "figures" / "x").mkdir(parents=True)

    def some_runs(src, dst, parameters, **kw):  # what experiments.run logs, a worker's run read back too
        Path(dst).write_text(json.dumps({"cells": [], "metadata": {}}))
        spec = {"rerank_k": 0}
        for event, key, seconds in (("trained", "a", 60.0), ("cached", "a", 60.0), ("trained", "b", 120.0),
                                    ("evaluated", "c", 30.0), ("cached", "d", 40.0)):
            experiments._logged(event, experiments.Result(key, spec, {}, [], seconds, 1.0, ""))

    monkeypatch.setattr(papermill, "execute_notebook", some_runs)
    monkeypatch.setattr(reproduce, "write_summary", lambda figures_dir: figures_dir / "summary.md")
    reproduce.run_notebooks("quick", notebook_dir=tmp_path, figures_dir=tmp_path / "figures")
    text = (tmp_path / "figures" / "x" / "run.md").read_text()
    assert "2 run(s) trained (3.0 min of training" in text
    assert "1 evaluated again from a cached checkpoint, 1 read from the run cache" in text
    assert experiments.RUN_LOG not in os.environ  # only while the notebook executes
    stamped = json.loads((tmp_path / "executed" / "01_x.ipynb").read_text())["metadata"]["tbpr"]
    assert stamped == {"code_version": reproduce.notebook_code_version("01_x")}
