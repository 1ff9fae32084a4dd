"""Executed copies (notebooks/executed/): what ``tbpr reproduce`` keeps for readers. Outputs stay;
widget state goes, each widget's view becomes a note and widget progress bars go; PNGs are scaled to
at most MAX_IMAGE_WIDTH; this machine's paths become relative; runs report in lines, not bars."""
import base64
import io
import json
import re
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from tbpr import reproduce

ROOT = Path(__file__).resolve().parents[1]
CELLS = [
    "import matplotlib.pyplot as plt\nfig = plt.figure(figsize=(30, 3), dpi=100)\nplt.plot([0, 1])\nplt.show()",
    "import ipywidgets\nipywidgets.IntSlider()",
    "from tqdm.auto import tqdm\nfor _ in tqdm(range(3)):\n    pass",
    "from tbpr import progress\nprint('progress mode:', progress.mode())",
    "from pathlib import Path\nimport tbpr\nprint(Path(tbpr.__file__).resolve())\nprint(Path.home() / 'somewhere')",
]


def _outputs(notebook: dict) -> list[dict]:
    return [o for c in notebook["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


def _png_width(output: dict) -> int:
    with Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"]))) as image:
        return image.width


def test_publish_drops_widget_state_and_bars_scales_images_and_relativises_paths(tmp_path):
    import papermill  # 1.2 s to import
    source = tmp_path / "99_probe.ipynb"
    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                 "language": "python"}})
    notebook.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbformat.write(notebook, source)
    executed = tmp_path / "executed.ipynb"
    with reproduce.unwatched_kernel():
        papermill.execute_notebook(str(source), str(executed), cwd=str(tmp_path), progress_bar=False)
    raw = json.loads(executed.read_text())
    assert "widgets" in raw["metadata"] and any(reproduce.WIDGET_VIEW in o.get("data", {}) for o in _outputs(raw))
    assert any(_png_width(o) > reproduce.MAX_IMAGE_WIDTH for o in _outputs(raw) if "image/png" in o.get("data", {}))

    reproduce.publish(executed)
    text = executed.read_text()
    published = json.loads(text)
    outputs = _outputs(published)
    assert "widgets" not in published["metadata"] and reproduce.WIDGET_VIEW not in text
    assert sum(reproduce.WIDGET_NOTE in "".join(o.get("data", {}).get("text/plain", "")) for o in outputs) == 1  # the slider
    assert not re.search(r"\d+%\|", text), "a frozen progress bar was kept"
    widths = [_png_width(o) for o in outputs if "image/png" in o.get("data", {})]
    assert widths == [reproduce.MAX_IMAGE_WIDTH]
    streams = "".join("".join(o["text"]) for o in outputs if o.get("output_type") == "stream")
    assert "progress mode: lines" in streams
    assert "./tbpr/__init__.py" in streams and "~/somewhere" in streams
    assert str(ROOT) not in text and str(Path.home()) + "/" not in text
    assert nbformat.reads(text, as_version=4)  # still a valid notebook
    reproduce.publish(executed)
    assert executed.read_text() == text  # publishing twice changes nothing


@pytest.mark.slow
def test_reproduce_writes_a_published_executed_copy_of_the_explorer(tmp_path, monkeypatch):
    """08 at smoke through ``tbpr reproduce`` into a temporary executed/ folder, on a fresh cache so
    that its runs train (and report in lines)."""
    monkeypatch.setenv("TBPR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TBPR_PROGRESS", raising=False)
    out_dir = tmp_path / "executed"
    reproduce.run_notebooks("smoke", only=["08"], out_dir=out_dir, figures_dir=tmp_path / "figures")
    text = (out_dir / "08_explorer.ipynb").read_text()
    published = json.loads(text)
    assert published["metadata"]["papermill"]["parameters"]["profile"] == "smoke"
    assert "widgets" not in published["metadata"] and reproduce.WIDGET_VIEW not in text
    assert reproduce.WIDGET_NOTE in text  # the explorer's panel
    assert not re.search(r"\d+%\|", text)
    streams = "".join("".join(o["text"]) for o in _outputs(published) if o.get("name") == "stdout")
    assert re.search(r"^ssan smoke seed 0: R1 \d+\.\d, \d+ s$", streams, re.M), streams[:2000]  # not in red
    assert "from the run cache ~/" in streams or "from the run cache " in streams
    assert str(Path.home()) + "/" not in text and str(ROOT) not in text
    assert any(o.get("data", {}).get("image/png") for o in _outputs(published))


def test_executed_copies_are_kept_out_of_jupytext_pairing():
    """A reader who opens an executed copy in JupyterLab and saves it makes no paired .py."""
    config = (ROOT / "notebooks" / "executed" / "jupytext.toml").read_text()
    assert re.search(r'^formats = "ipynb"$', config, re.M)


def test_publish_writes_papermills_parameters_and_an_outside_cache_without_this_machines_paths(tmp_path, monkeypatch):
    cache = tmp_path / "elsewhere_cache"
    monkeypatch.setenv("TBPR_CACHE", str(cache))
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")
    out_dir = f"{ROOT}/figures"
    notebook = nbformat.v4.new_notebook(metadata={"papermill": {"parameters": {"out_dir": out_dir, "seeds": None}}})
    injected = nbformat.v4.new_code_cell(f'out_dir = "{out_dir}"\n')
    injected.metadata["tags"] = ["injected-parameters"]
    printed = nbformat.v4.new_code_cell("print(root)")
    printed.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"synthpedes ({cache}/synthpedes/quick)\n")]
    notebook.cells = [injected, printed]
    path = tmp_path / "executed.ipynb"
    nbformat.write(notebook, path)
    reproduce.publish(path, repo=ROOT)
    published = json.loads(path.read_text())
    assert "".join(published["cells"][0]["source"]) == 'out_dir = "./figures"\n'
    assert published["metadata"]["papermill"]["parameters"] == {"out_dir": "./figures", "seeds": None}
    assert "".join(published["cells"][1]["outputs"][0]["text"]) == "synthpedes ($TBPR_CACHE/synthpedes/quick)\n"
