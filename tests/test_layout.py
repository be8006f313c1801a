"""The house plan holds: small modules and functions, one-way imports without cycles, no
module reaching into another's private names, Keras Tuner's internals reached from
`pipeline/search/internals.py` only.

The layering rule is README's (Architecture): each module imports only from its own
layer or the layers before it, and the import graph has no cycle at all.
"""

import ast
import re

import pytest
from conftest import REPO

PACKAGE = REPO / "pipeline"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
# README's order: errors & tracking/names -> progress, data, spec -> space -> training
# -> tracking -> search -> report -> sweep -> cli. A module's layer is its package's.
LAYERS = [
    ("errors", "tracking.names"),
    ("progress", "data", "spec"),
    ("space",),
    ("training",),
    ("tracking",),
    ("search",),
    ("report",),
    ("sweep",),
    ("cli", "__main__"),
]
PACKAGES = ("spec", "training", "tracking", "search", "report", "cli")
INTERNALS = re.compile(r"keras_tuner\.src|_retry_queue|_max_collisions|_random_values|"
                       r"_duplicate|_check_consecutive_failures|_get_next_combination|"
                       r"_save_trial|_try_run_and_update_trial|oracle_client|oracle_chief|"
                       r"OracleServicer")
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}


def module_name(path):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def pipeline_imports(path):
    """The pipeline modules `path` imports, as names relative to the package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "pipeline"):
            base = node.module.removeprefix("pipeline").lstrip(".")
            for alias in node.names:
                full = f"{base}.{alias.name}".lstrip(".")
                found.add(full if (PACKAGE / f"{full.replace('.', '/')}.py").exists()
                          else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("pipeline.") for a in node.names
                      if a.name.startswith("pipeline.")}
    return {name for name in found if name and name not in PACKAGES}


def layer_of(name):
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            if name == entry or name.startswith(entry + "."):
                # tracking.names sits below the rest of tracking.
                if entry == "tracking" and name == "tracking.names":
                    continue
                return index
    return None


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p) or "pipeline")
def test_module_and_functions_are_small(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{path.name}: {len(lines)} lines"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}:{node.name}: {length} lines"


def test_every_module_has_a_layer():
    names = {module_name(p) for p in MODULES} - {"", *PACKAGES}
    assert {n for n in names if layer_of(n) is None} == set()


def test_the_root_holds_only_the_flow_and_its_packages():
    """A newcomer finds each concept's room from the tree: the root keeps the few
    modules of the data flow, everything else lives in a package named after its concern."""
    root = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert root == {"errors", "progress", "data", "space", "sweep"}
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == set(PACKAGES)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p) or "pipeline")
def test_imports_flow_one_way(path):
    """A module imports only from its own layer or the layers before it."""
    own = layer_of(module_name(path))
    if own is None:  # A package's __init__: no imports of its own.
        assert pipeline_imports(path) <= {"report.render"}
        return
    for name in pipeline_imports(path):
        assert layer_of(name) is not None and layer_of(name) <= own, (
            f"{module_name(path)} imports {name}, which comes later in the data flow")


def test_no_import_cycle_even_inside_a_layer():
    graph = {module_name(p): pipeline_imports(p) for p in MODULES}
    done, path = set(), []

    def visit(name):
        if name in path:
            cycle = path[path.index(name):] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        path.append(name)
        for other in sorted(graph.get(name, ())):
            visit(other)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p) or "pipeline")
def test_no_module_reaches_into_another_ones_private_names(path):
    """`x._name` only on `self`/`cls`, and no `from pipeline... import _name`;
    Keras Tuner's private names go through `search/internals.py`, the one exception."""
    if module_name(path) == "search.internals":
        return
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and (
                not node.attr.startswith("__") and node.attr not in NAMEDTUPLE_API):
            value = node.value
            own = (isinstance(value, ast.Name) and value.id in ("self", "cls")) or (
                isinstance(value, ast.Call) and getattr(value.func, "id", "") == "super")
            assert own, f"{path.name}:{node.lineno}: {ast.unparse(node)}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            assert not [a.name for a in node.names if a.name.startswith("_")], (
                f"{path.name}:{node.lineno}")


def test_keras_tuner_internals_are_reached_from_search_only():
    outside = [p for p in MODULES if "search" not in p.relative_to(PACKAGE).parts]
    for path in outside:
        assert not INTERNALS.search(path.read_text()), path.name
    users = {module_name(p) for p in MODULES if "keras_tuner.src" in p.read_text()}
    assert users == {"search.internals"}


def test_every_error_class_lives_in_errors():
    for path in MODULES:
        if module_name(path) == "errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b).split(".")[-1] for b in node.bases}
                assert not bases & {"Exception", "BaseException", "PipelineError",
                                    "InputError", "ValueError", "RuntimeError"}, (
                    f"{path.name}: {node.name}")
