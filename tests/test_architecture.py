"""docs/ARCHITECTURE.md kept true: imports go one way (data -> models -> metrics -> training -> evaluation ->
trainers -> predict), no import circle, no function longer than ~80 lines, no module longer than ~450."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "stsynth_lib"
LAYERS = ["base", "data", "models", "metrics", "training", "evaluation", "trainers", "predict"]
# module (dotted, without the "stsynth_lib." prefix) or package prefix -> layer; the longest match wins
LAYER_OF = {
    "__init__": "base", "runs": "base", "book": "base", "verdict": "base", "figure_check": "base", "options": "base",
    "data": "data",
    "models": "models", "conditioning": "models", "baselines": "models", "controlnet.backbone": "models", "controlnet.tokenizer": "models",
    "controlnet.conditioning": "models", "cgan.model_io": "models", "controlnet.__init__": "models",
    "cgan.__init__": "models",
    "metrics": "metrics",
    "training": "training", "predict.files": "training", "predict.base": "training", "predict.split": "training",
    "params": "training",
    "evaluate": "evaluation",
    "cgan": "trainers", "controlnet": "trainers",
    "predict": "predict",
}
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for p in LIB.rglob("*.py"):
        rel = p.relative_to(LIB).with_suffix("")
        out[".".join(rel.parts)] = p
    return out


def _layer(mod: str) -> str:
    best = max((k for k in LAYER_OF if mod == k or mod.startswith(k + ".") or mod.split(".")[0] == k),
               key=len, default=None)
    assert best is not None, f"stsynth_lib.{mod} has no layer: add it to LAYER_OF and docs/ARCHITECTURE.md"
    return LAYER_OF[best]


def _imports(path: Path) -> set[str]:
    """Every stsynth_lib module or name ``path`` imports, lazily or not (``if TYPE_CHECKING:`` blocks aside)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for b in ast.walk(tree) if isinstance(b, ast.If) and getattr(b.test, "id", "") == "TYPE_CHECKING"
                   for n in ast.walk(b)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stsynth_lib"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("stsynth_lib")]
        for n in names:
            found.add(n[len("stsynth_lib."):] if n != "stsynth_lib" else "__init__")
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    if name in modules:
        return name
    if f"{name}.__init__" in modules:
        return f"{name}.__init__"
    return None  # a name imported from a module (``from x import f`` -> "x.f")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {r for n in _imports(p) if (r := _resolve(n, modules)) and r != m} for m, p in modules.items()}


def test_imports_go_one_way():
    wrong = []
    for mod, deps in _graph().items():
        for dep in deps:
            if dep.endswith("__init__") and dep != "__init__" and dep.split(".")[0] == mod.split(".")[0]:
                continue  # a package's own __init__
            if LAYERS.index(_layer(dep)) > LAYERS.index(_layer(mod)):
                wrong.append(f"stsynth_lib.{mod} ({_layer(mod)}) imports stsynth_lib.{dep} ({_layer(dep)})")
    assert not wrong, "imports against the layer order of docs/ARCHITECTURE.md:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = _graph()
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if d.endswith("__init__"):
                continue
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("path", sorted(LIB.rglob("*.py")), ids=lambda p: str(p.relative_to(LIB)))
def test_module_and_function_sizes(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: {len(text.splitlines())} lines"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"
