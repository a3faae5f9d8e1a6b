"""The deployment zip ships exactly the runtime modules, from one explicit list.

The handler's import closure is computed statically: ``lambda_function.py`` and every
project module it imports, at any depth and also inside functions. Every module in
that closure must be in ``RUNTIME_MODULES``, every listed module must exist, and no
tool (local_api, demo, deploy, the top-level test scripts) may be in either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from deployment.errors import DeployError
from deployment.package import (
    HANDLER_MODULE,
    PROJECT_DIR,
    RUNTIME_DATA,
    RUNTIME_MODULES,
    project_files,
)

ENTRY = HANDLER_MODULE.removesuffix(".py")
TOOLS = ("local_api", "demo", "deploy", "test_lambda", "test_local_dicom")
NOT_PROJECT_DIRS = {"tests", "bench", "build", "out", "__pycache__"}


def top_level_modules(root: Path) -> set[str]:
    return {path.stem for path in root.glob("*.py")}


def top_level_packages(root: Path) -> set[str]:
    """Project folders holding Python: importing one would need it shipped as a folder."""
    return {
        path.name
        for path in root.iterdir()
        if path.is_dir()
        and not path.name.startswith(".")
        and path.name not in NOT_PROJECT_DIRS
        and any(path.glob("*.py"))
    }


def imported_names(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file, wherever it stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def import_closure(root: Path, entry: str) -> set[str]:
    """``entry`` and every project module or folder it imports, transitively."""
    modules, packages = top_level_modules(root), top_level_packages(root)
    seen: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in modules:
            imported = imported_names(root / f"{name}.py")
            todo.extend(sorted(imported & (modules | packages)))
    return seen


def test_the_closure_follows_every_kind_of_import(tmp_path: Path) -> None:
    (tmp_path / "entry.py").write_text(
        "import os\nimport helper\n\ndef later():\n    from lazy import thing\n"
        "    import pkg.inner\n    return thing\n"
    )
    (tmp_path / "helper.py").write_text("from deep.name import x  # deep is not ours\n")
    (tmp_path / "lazy.py").write_text("import helper, leaf\nthing = 1\n")
    (tmp_path / "leaf.py").write_text("")
    (tmp_path / "tool.py").write_text("import entry\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "inner.py").write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("")
    assert import_closure(tmp_path, "entry") == {"entry", "helper", "lazy", "leaf", "pkg"}


def test_every_module_the_handler_imports_is_in_the_list() -> None:
    closure = import_closure(PROJECT_DIR, ENTRY)
    missing = sorted(closure - set(RUNTIME_MODULES))
    assert not missing, (
        f"{ENTRY} imports {missing}, which RUNTIME_MODULES in deployment/package.py "
        "does not list: the deployed function would fail to import them"
    )


def test_every_listed_runtime_file_exists() -> None:
    assert ENTRY in RUNTIME_MODULES
    assert len(set(RUNTIME_MODULES)) == len(RUNTIME_MODULES)
    missing = [m for m in RUNTIME_MODULES if not (PROJECT_DIR / f"{m}.py").is_file()]
    missing += [name for name in RUNTIME_DATA if not (PROJECT_DIR / name).is_file()]
    assert missing == []
    assert project_files() == [
        *(PROJECT_DIR / f"{m}.py" for m in RUNTIME_MODULES),
        *(PROJECT_DIR / name for name in RUNTIME_DATA),
    ]


def test_tools_and_tests_are_never_shipped() -> None:
    closure = import_closure(PROJECT_DIR, ENTRY)
    for tool in TOOLS:
        assert tool not in RUNTIME_MODULES, tool
        assert tool not in closure, f"{ENTRY} imports the tool {tool}"
    assert "deployment" not in closure
    assert not [m for m in RUNTIME_MODULES if m.startswith("test_") or m.endswith("_test")]
    assert not [m for m in closure if m.startswith("test_")]


def test_a_listed_module_missing_on_disk_stops_the_build(tmp_path: Path) -> None:
    (tmp_path / "lambda_function.py").write_text("import gone\n")
    (tmp_path / "lambda_config.json").write_text("{}")
    with pytest.raises(DeployError, match=r"gone\.py.*RUNTIME_MODULES"):
        project_files(tmp_path, modules=("lambda_function", "gone"))
    assert project_files(tmp_path, modules=("lambda_function",)) == [
        tmp_path / "lambda_function.py",
        tmp_path / "lambda_config.json",
    ]
