"""The package's layers: a module imports only modules of its own layer or of layers below it, and no module
imports itself back through a cycle. The order is the README's design section."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "warprl"

LAYERS = [
    {"errors", "io", "seeding", "precision", "heap", "optim"},
    {"config"},
    {"models", "data", "lora"},
    {"merge", "lora_merge"},  # lora_merge: WARP's merge of LoRA runs (their ΔW = s·B·A) with merge's kernels
    {"reward"},
    {"rl"},
    {"sft"},  # reuses the RL run's machinery (stop flag, checkpoint helpers, metrics log)
    {"eval"},
    {"commands"},
    {"cli"},
]


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else module
    return next(i for i, names in enumerate(LAYERS) if top in names)


def imports() -> dict[str, set[str]]:
    """warprl modules each module imports (at any depth of its code)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("warprl"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names
                            if (PACKAGE.parent / node.module.replace(".", "/") / f"{a.name}.py").is_file())
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("warprl"))
        graph[name] = {d for d in deps if d != "warprl"}
    return graph


def test_every_module_has_a_layer():
    for name in imports():
        if name != "warprl":
            layer_of(name)  # StopIteration = a top-level module missing from LAYERS


def test_no_import_from_a_higher_layer():
    wrong = [f"{m} → {d}" for m, deps in imports().items() if m != "warprl"
             for d in deps if layer_of(d) > layer_of(m)]
    assert not wrong


def test_no_import_cycles():
    graph = imports()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " → ".join([*stack[stack.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_no_module_is_over_450_lines():
    long = {p.relative_to(PACKAGE).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert not long
