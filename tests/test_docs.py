"""The documentation is true: the README's Python examples run, every repository path and ``tbpr.``
name it gives exists, and the repository cites papers, equations, tables and official code only,
never the private notes it was written from (``shared/specs``, ``shared/papers``) or their labels.

A README ```python block that cannot run here (it needs a GPU, a real dataset, or trains beyond the
smoke profile) is preceded by ``<!-- not-run: why -->``; such blocks should stay rare.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

BLOCK = re.compile(r"(?:<!--\s*not-run:\s*(?P<why>.*?)\s*-->\s*\n)?```python\n(?P<code>.*?)^```",
                   re.S | re.M)


def readme_blocks() -> list[tuple[int, str, str | None]]:
    """(line, code, reason not to run it or None) for every ```python block of the README."""
    text = README.read_text()
    return [(text[:m.start("code")].count("\n") + 1, m["code"], m["why"]) for m in BLOCK.finditer(text)]


def test_readme_has_python_examples():
    assert len(readme_blocks()) >= 2


@pytest.fixture(scope="module")
def docs_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("docs_cache")


TRAINS_BEYOND_SMOKE = re.compile(r"""\brun\(\s*["']\w+["']\s*,\s*(?:profile\s*=\s*)?["'](?!smoke["'])""")


@pytest.mark.parametrize("line,code,why", [pytest.param(*b, id=f"line{b[0]}") for b in readme_blocks()])
def test_readme_python_block_runs(line, code, why, docs_cache, monkeypatch):
    """Each block in a fresh namespace, caching into a folder of this module's own."""
    if why is not None:
        assert why.strip(), f"README line {line}: a not-run marker must say why"
        pytest.skip(f"README line {line}: {why}")
    assert not TRAINS_BEYOND_SMOKE.search(code), f"README line {line}: examples train at profile 'smoke'"
    monkeypatch.setenv("TBPR_CACHE", str(docs_cache))
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


# ---------------------------------------------------------------------------------------------------
# paths and names

def sources(tests: bool = False) -> list[Path]:
    """The files whose prose this module checks: the README, the package's code and presets, the
    notebooks' sources and, with ``tests``, the tests (this module left out: it quotes the labels)."""
    found = [README, *sorted((ROOT / "tbpr").rglob("*.py")), *sorted((ROOT / "tbpr").rglob("*.yaml")),
             *sorted((ROOT / "notebooks" / "src").glob("*.py"))]
    here = Path(__file__).resolve()
    return found + ([p for p in sorted((ROOT / "tests").glob("*.py")) if p != here] if tests else [])


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


PATH = re.compile(r"(?<![\w./$~-])((?:tbpr|notebooks|figures|tests)/[\w./<>*-]*)")
# where the repository writes but holds nothing (git-ignored outputs of `tbpr reproduce`)
OUTPUTS = ("notebooks/executed/", "figures/smoke/")


def exists(ref: str) -> bool:
    """``ref`` names a file or folder of the repository; ``<placeholder>`` and ``*`` stand for any
    name, and a file may be named without its suffix (``notebooks/02_ssan``)."""
    ref = ref.rstrip(".")
    if ref.startswith(OUTPUTS) or ref + "/" in OUTPUTS:
        return True
    pattern = re.sub(r"<[^<>/]*>", "*", ref).rstrip("/")
    if "<" in pattern or ">" in pattern:
        return False
    return any(ROOT.glob(pattern)) or any(ROOT.glob(pattern + ".*"))


def test_every_repository_path_exists():
    missing = [f"{rel(src)}:{n}: {m[1]}" for src in sources()
               for n, line in enumerate(src.read_text().splitlines(), 1)
               for m in PATH.finditer(line) if not exists(m[1])]
    assert not missing, "\n".join(missing)


DOTTED = re.compile(r"(?<![\w.])tbpr(?:\.[A-Za-z_]\w*)+")


def resolves(name: str) -> bool:
    """``tbpr.a.b.c`` is a module, or an attribute reached from the longest importable module."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_tbpr_name_in_the_readme_exists():
    names = sorted(set(DOTTED.findall(README.read_text())))
    assert names and [n for n in names if not resolves(n)] == []


# ---------------------------------------------------------------------------------------------------
# citations

CITATION = re.compile("|".join([
    r"shared/(?:specs|papers)",                        # the private notes themselves
    r"§\s*\d+(?:\.\d+)*\s*-\s*[A-Z]\d+",               # §8-A14
    r"\bspec(?:s|'s)?\s+(?:§\s*\d|sections?\s+\d|[A-Z]?\d)",  # spec A7, spec 9.3, spec §9
    r"\b(?:of|in|from) the spec\b",                    # Sec. 2.12 of the spec
    r"\bgap\s+G\d+",                                   # gap G16
    r"\((?:spec\s+)?A\d{1,2}\)",                       # (A3), (spec A3)
    r"(?<![\w/-])A\d{1,2}:",                           # A8: ...
    r"#\s*A\d{1,2}\s*$",                               # a trailing "# A8"
]), re.M)


def test_only_papers_and_official_code_are_cited():
    cited = [f"{rel(src)}:{n}: {m[0]!r}" for src in sources(tests=True)
             for n, line in enumerate(src.read_text().splitlines(), 1) for m in CITATION.finditer(line)]
    assert not cited, "\n".join(cited)


@pytest.mark.parametrize("text,found", [
    ("frozen BN statistics do not drift (spec A14)", True), ("see §8-A14/A15", True),
    ("Spec: ``shared/specs/mia.md``", True), ("the ImageNet stand-in (spec 9.3)", True),
    ("patch_stride  # gap G16: the official scripts", True), ("as ``Vocabulary`` does (A3).", True),
    ("min_word_count: int = 2  # A1: seen twice", True), ("(Sec. 2.12 of the spec)", True),
    ("Eq. 6 of the paper; SSAN §5.3; the official code", False), ("result.spec['model']", False),
    ("an A100 GPU", False),
])
def test_citation_pattern(text, found):
    assert bool(CITATION.search(text)) is found
