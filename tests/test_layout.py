"""The shape of the code: room sizes, one-way data flow, and no import cycles.

These are the rules of DESIGN.md that a reader relies on to find things: a file
stays under 1,000 lines and a function under 60; the converter knows no URL and no
settings, the downloader no DICOM; only the entry points read ``Settings``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
MAX_FILE_LINES = 1000
MAX_FUNCTION_LINES = 60

# Rooms that receive narrow values, never the settings object.
NO_SETTINGS = (
    "dicom_converter",
    "dicom_dataset",
    "dicom_codecs",
    "file_downloader",
    "url_policy",
    "s3_store",
    "temp_cleaner",
    "service_log",
    "errors",
)
# The CLI is an entry point that lives in dicom_converter.py (the seed's command),
# so the functions that build the CLI's settings may import them.
ENTRY_POINT_FUNCTIONS = {"dicom_converter": ("main", "cli_limits", "_cli_settings")}
# Data flows one way: what each room must not know.
FORBIDDEN = {
    "dicom_converter": ("file_downloader", "url_policy", "s3_store", "lambda_function", "pipeline"),
    "dicom_dataset": ("file_downloader", "url_policy", "s3_store", "lambda_function", "pipeline"),
    "dicom_codecs": ("file_downloader", "url_policy", "s3_store", "lambda_function", "pipeline"),
    "file_downloader": ("dicom_converter", "dicom_dataset", "dicom_codecs", "lambda_function"),
    "url_policy": ("dicom_converter", "dicom_dataset", "file_downloader", "lambda_function"),
    "s3_store": ("dicom_converter", "dicom_dataset", "lambda_function", "pipeline"),
    "temp_cleaner": ("dicom_converter", "file_downloader", "lambda_function", "pipeline"),
    "pipeline": ("lambda_function",),
    "bulk": ("lambda_function",),
}


def source_files() -> list[Path]:
    files = sorted(PROJECT.glob("*.py"))
    files += sorted((PROJECT / "deployment").glob("*.py"))
    return files


def module_name(path: Path) -> str:
    relative = path.relative_to(PROJECT).with_suffix("")
    return ".".join(relative.parts)


def project_modules() -> set[str]:
    return {module_name(p) for p in source_files()} | {"deployment"}


def imports(tree: ast.AST, modules: set[str]) -> Iterator[tuple[str, ast.AST]]:
    """(imported project module, node) for every import anywhere in ``tree``."""
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in modules:
                yield name, node


def functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("path", source_files(), ids=lambda p: p.name)
def test_files_and_functions_stay_small(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path.name} is over {MAX_FILE_LINES} lines"
    long = [
        f"{f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for f in functions(ast.parse(text))
        if f.end_lineno is not None and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for path in source_files():
        name = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {target for target, _ in imports(tree, modules) if target != name}
    return graph


def test_no_import_cycles() -> None:
    graph = import_graph()
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"


def enclosing_function(tree: ast.AST, target: ast.AST) -> str | None:
    for function in functions(tree):
        if any(node is target for node in ast.walk(function)):
            return function.name
    return None


@pytest.mark.parametrize("room", NO_SETTINGS)
def test_rooms_do_not_read_the_settings_object(room: str) -> None:
    path = PROJECT / f"{room}.py"
    if not path.exists():
        pytest.skip(f"{room}.py does not exist")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    allowed = ENTRY_POINT_FUNCTIONS.get(room, ())
    readers = [
        enclosing_function(tree, node) or "<module>"
        for target, node in imports(tree, project_modules())
        if target.split(".")[0] == "settings"
    ]
    assert all(reader in allowed for reader in readers), f"{room} imports settings in {readers}"


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_data_flows_one_way(room: str) -> None:
    path = PROJECT / f"{room}.py"
    if not path.exists():
        pytest.skip(f"{room}.py does not exist")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    known = {target.split(".")[0] for target, _ in imports(tree, project_modules())}
    assert not known & set(FORBIDDEN[room]), (
        f"{room} imports {sorted(known & set(FORBIDDEN[room]))}"
    )


def test_settings_is_read_once_at_the_entry_points() -> None:
    """Only entry points and the one place that derives each room's values build settings."""
    builders = set()
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        if "get_settings(" in text or "load_settings(" in text:
            builders.add(module_name(path))
    builders.discard("settings")
    entry_points = {
        "lambda_function",
        "bulk",
        "pipeline",
        "local_api",
        "demo",
        "deploy",
        "dicom_converter",
    }
    deployment = {m for m in builders if m.startswith("deployment")}
    assert builders - deployment <= entry_points
