"""The library's import graph: imports only go down the floors below (never up), no circle, at most
eight floors. Read from the source with ``ast``, imports inside functions included."""
from __future__ import annotations

import ast
from pathlib import Path

import tbpr

PACKAGE = Path(tbpr.__file__).parent
# floor by module path prefix, lowest first; the longest matching prefix wins
FLOORS = [
    ("tbpr.config", "tbpr.losses", "tbpr.progress"),                  # configs as data, objectives, bars
    ("tbpr.data",),                                                   # formats, text, transforms
    ("tbpr.evaluate", "tbpr.engine", "tbpr.cache", "tbpr.stats"),     # metrics, training loop, caches,
                                                                      # paired statistics
    ("tbpr.synthpedes", "tbpr.backbones", "tbpr.zoo"),                # benchmark, shared trunks, zoo loading
    ("tbpr.papers",),                                                 # one folder per paper
    ("tbpr.experiments", "tbpr.summary", "tbpr.bench", "tbpr.reproduce",  # runs, tables, timing,
     "tbpr.pretrain", "tbpr.shipped"),                                 # zoo pre-training, shipped models
    ("tbpr.viz", "tbpr.explorer"),                                    # plots and the widget
    ("tbpr.cli",),                                                    # the command line
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> int | None:
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    return None if best is None else best[0]


def imports_of(path: Path) -> set[str]:
    """tbpr modules imported by ``path`` (absolute or relative, at any depth of the file)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tbpr"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tbpr":
                continue
            # "from tbpr.papers import mia" names a submodule; "from .x import name" a module
            subs = {f"{target}.{a.name}" for a in node.names
                    if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                    or (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).is_dir()}
            found |= subs or {target}
    found.discard(here)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_floor():
    assert [m for m in graph() if floor_of(m) is None and m != "tbpr"] == []


def test_imports_only_go_down():
    upward = [f"{m} (floor {floor_of(m)}) imports {t} (floor {floor_of(t)})"
              for m, targets in graph().items() if m != "tbpr" for t in targets
              if floor_of(t) is not None and floor_of(t) > floor_of(m)]
    assert upward == []


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
                return True
            if nxt in edges and state.get(nxt) is None and visit(nxt, path + [nxt]):
                return True
        state[node] = 2
        return False

    for start in edges:
        if state.get(start) is None and visit(start, [start]):
            break
    assert cycle == []


def test_at_most_eight_floors():
    assert len(FLOORS) <= 8
