"""The house plan holds: small modules and functions, one-way imports, Keras Tuner's
internals reached from `pipeline/search/` only."""

import ast
import re

import pytest
from conftest import REPO

PACKAGE = REPO / "pipeline"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
# Each layer may import only from layers before it: the data flow of README's
# architecture section (spec -> space -> oracle -> tuner -> tracking -> report).
LAYERS = [
    {"errors", "tracking.names"},
    {"spec", "data", "device", "progress"},
    {"specfields", "specfile", "space", "schedule"},
    {"model", "stopping", "gradients", "plots", "tracking.server", "chain", "packed", "search.auth",
     "tracking.system_metrics"},
    {"tracking.runs", "tracking.trial_run", "tracking.datasets"},
    {"tracking.registry"},
    {"search.internals", "search.oracles", "search.distributed", "search.local_cluster",
     "search.state_files", "search.servicer",
     "search.tuner", "search.packing"},
    {"sweep", "report.document", "report.load", "report.answers", "report.render"},
    {"options", "cli", "__main__"},
]
INTERNALS = re.compile(r"keras_tuner\.src|_retry_queue|_max_collisions|_random_values|"
                       r"_duplicate|_check_consecutive_failures|_get_next_combination|"
                       r"_save_trial|oracle_client|oracle_chief|OracleServicer")


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
                          or (PACKAGE / full.replace(".", "/")).is_dir() else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("pipeline.") for a in node.names
                      if a.name.startswith("pipeline.")}
    return {name for name in found if name}


def layer_of(name):
    for index, layer in enumerate(LAYERS):
        if name in layer:
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
    names = {module_name(p) for p in MODULES} - {"", "tracking", "search", "report"}
    assert {n for n in names if layer_of(n) is None} == set()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p) or "pipeline")
def test_imports_flow_one_way(path):
    """A module imports only from its own layer or the layers before it: no cycles."""
    own = layer_of(module_name(path))
    if own is None:  # A package's __init__: no imports of its own.
        assert pipeline_imports(path) <= {"report.render"}
        return
    for name in pipeline_imports(path):
        if name in ("tracking", "search", "report"):
            continue  # `from pipeline.tracking import names` names the module itself.
        assert layer_of(name) is not None and layer_of(name) <= own, (
            f"{module_name(path)} imports {name}, which comes later in the data flow")


def test_keras_tuner_internals_are_reached_from_search_only():
    outside = [p for p in MODULES if "search" not in p.relative_to(PACKAGE).parts]
    for path in outside:
        assert not INTERNALS.search(path.read_text()), path.name
    users = {module_name(p) for p in MODULES if "keras_tuner.src" in p.read_text()}
    assert users == {"search.internals"}
