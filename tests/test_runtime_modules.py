"""The deployment zip ships exactly the runtime modules, from one explicit list,
and of its dependencies only what the service loads.

The handler's import closure is computed statically: ``lambda_function.py`` and every
project module it imports, at any depth and also inside functions. Every module in
that closure must be in ``RUNTIME_MODULES``, every listed module must exist, and no
tool (local_api, demo, deploy, the top-level test scripts) may be in either.

The built package for each runtime and architecture stays within the size budget,
and the unzipped x86_64 package renders every syntax family on the runtime's own
Python, loading every imagecodecs extension and bundled library it ships.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import pytest

from deployment import package as packaging
from deployment.errors import DeployError
from deployment.package import (
    HANDLER_MODULE,
    PROJECT_DIR,
    RUNTIME_DATA,
    RUNTIME_MODULES,
    project_files,
)
from tests.corpus import require_corpus

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
    (tmp_path / "playground.html").write_text("<!doctype html>")
    with pytest.raises(DeployError, match=r"gone\.py.*RUNTIME_MODULES"):
        project_files(tmp_path, modules=("lambda_function", "gone"))
    assert project_files(tmp_path, modules=("lambda_function",)) == [
        tmp_path / "lambda_function.py",
        tmp_path / "lambda_config.json",
        tmp_path / "playground.html",
    ]


# --------------------------------------------------------------------------- pruning

MAX_ZIPPED_BYTES = 40 * 1000 * 1000
MAX_PACKAGE_UNZIPPED_BYTES = 160 * 1000 * 1000


def _imagecodecs_site() -> Path:
    spec = find_spec("imagecodecs")
    if spec is None or spec.origin is None:
        pytest.skip("imagecodecs is not installed in this environment")
    return Path(spec.origin).parent


def _readelf_needed(path: Path) -> list[str]:
    text = subprocess.run(
        ["readelf", "-d", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [
        line.split("[", 1)[1].split("]", 1)[0] for line in text.splitlines() if "(NEEDED)" in line
    ]


def test_needed_libraries_reads_what_readelf_reads() -> None:
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    site = _imagecodecs_site()
    files = (
        sorted(site.glob("_*.so"))[:12] + sorted((site.parent / "imagecodecs.libs").glob("*"))[:12]
    )
    assert files
    for path in files:
        assert packaging.needed_libraries(path.read_bytes()) == _readelf_needed(path), path.name
    assert packaging.needed_libraries(b"#!/bin/sh\n") is None
    with pytest.raises(DeployError, match="64-bit little-endian"):
        packaging.needed_libraries(b"\x7fELF\x01\x01" + bytes(64))


def test_unused_codecs_and_their_libraries_are_left_out(tmp_path: Path) -> None:
    """Real imagecodecs binaries: _jpeg8 keeps libjpeg; _lz4's and _jpegls's go."""
    site = _imagecodecs_site()
    libs = site.parent / "imagecodecs.libs"
    codecs = tmp_path / "imagecodecs"
    codecs.mkdir()
    (tmp_path / "imagecodecs.libs").mkdir()
    for name in ("_jpeg8", "_lz4"):
        shutil.copy2(next(site.glob(f"{name}.*so")), codecs)
    for pattern in ("libjpeg-*", "liblz4-*", "libcharls-*"):
        shutil.copy2(next(libs.glob(pattern)), tmp_path / "imagecodecs.libs")
    (codecs / "numcodecs.py").write_text("")
    (codecs / "__init__.pyi").write_text("")
    packaging.prune_unused_parts(tmp_path)
    packaging.prune_bundled_libraries(tmp_path)
    assert sorted(p.name.split(".")[0] for p in codecs.iterdir()) == ["_jpeg8"]
    kept = [p.name.split("-")[0] for p in (tmp_path / "imagecodecs.libs").iterdir()]
    assert kept == ["libjpeg"]


def test_pydicom_keeps_only_the_test_files_its_import_looks_up(tmp_path: Path) -> None:
    examples = tmp_path / "pydicom" / "examples"
    examples.mkdir(parents=True)
    (examples / "__init__.py").write_text(
        'ct = get_testdata_file("CT_small.dcm")\ndd = get_testdata_file( "DICOMDIR")\n'
    )
    data = tmp_path / packaging.PYDICOM_TEST_FILES
    (data / "dicomdirtests" / "sub").mkdir(parents=True)
    for name in ("CT_small.dcm", "big.dcm", "dicomdirtests/DICOMDIR", "dicomdirtests/sub/x"):
        (data / name).write_bytes(b"x")
    packaging.prune_pydicom_test_files(tmp_path)
    kept = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
    assert kept == ["CT_small.dcm", "dicomdirtests/DICOMDIR"]
    assert not (data / "dicomdirtests" / "sub").exists()


# --------------------------------------------------------------------------- built packages


@pytest.fixture(scope="module")
def package_for(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """Each runtime/arch zip is built once per module (wheels cached in build/)."""
    folder = tmp_path_factory.mktemp("runtime-packages")
    built: dict[tuple[str, str], Path] = {}

    def build(runtime: str, arch: str) -> Path:
        if (runtime, arch) not in built:
            dest = folder / f"{runtime}-{arch}.zip"
            built[runtime, arch] = packaging.build_package(runtime, arch, dest).path
        return built[runtime, arch]

    return build


TARGETS = [(runtime, arch) for runtime in packaging.RUNTIMES for arch in packaging.ARCHITECTURES]


@pytest.mark.parametrize(("runtime", "arch"), TARGETS)
def test_package_stays_within_the_size_budget(
    runtime: str, arch: str, package_for: Callable[[str, str], Path]
) -> None:
    package = packaging.describe_zip(package_for(runtime, arch))
    packaging.check_package(package, runtime, arch)
    assert package.zipped_bytes <= MAX_ZIPPED_BYTES, package.size_text
    assert package.unzipped_bytes <= MAX_PACKAGE_UNZIPPED_BYTES, package.size_text
    with zipfile.ZipFile(package.path) as archive:
        names = archive.namelist()
    assert not [n for n in names if n.endswith(".pyi") or "/tests/" in n]
    assert not [n for n in names if n.startswith(("numpy/f2py/", "numpy/_core/include/"))]
    codecs = {
        n.split("/")[1].split(".")[0]
        for n in names
        if n.startswith("imagecodecs/_") and n.endswith(".so")
    }
    assert codecs and codecs <= packaging.IMAGECODECS_KEPT, codecs
    if packaging.runtime_python(packaging.RUNTIMES[runtime]) is not None:
        tag = f"cpython-{packaging.RUNTIMES[runtime].replace('.', '')}.pyc"
        assert package.bytecode and "pydicom/__pycache__/dataset." + tag in names


# Every syntax family of dicom_codecs, and each output format, from the corpus.
RENDER_CASES = (
    ("GH1308.dcm", "jpg"),  # native, signed
    ("image_dfl.dcm", "png"),  # deflated
    ("YBR_FULL-RLE.dcm", "webp"),  # RLE, colour
    ("DIRW0007.dcm", "jpg"),  # JPEG baseline, colour
    ("RG2_JPLY_fixed.dcm", "jpg"),  # JPEG extended 12-bit
    ("CT-JPEGLosslessSV1.dcm", "png"),  # JPEG lossless
    ("JLSL_16_15_1_1F.dcm", "jpg"),  # JPEG-LS lossless, signed
    ("CT1_JLSN.dcm", "jpg"),  # JPEG-LS near-lossless
    ("GH064.dcm", "jpg"),  # JPEG 2000
    ("HTJ2KLossless_08_RGB.dcm", "webp"),  # HTJ2K
    ("will-jxl.dcm", "jpg"),  # JPEG XL: renders, or a clean 415
)

RENDER_CHECK = """
import json, sys
sys.path[:0] = [{package!r}]
import lambda_function
from dicom_converter import RenderOptions, render
from errors import ServiceError
results = {{}}
for name, fmt in {cases!r}:
    try:
        result = render({corpus!r} + "/" + name, RenderOptions(output_format=fmt))
        results[name] = [result.format, len(result.image)]
    except ServiceError as exc:
        results[name] = [type(exc).__name__, exc.status]
libs = {{line.split()[-1] for line in open("/proc/self/maps") if ".so" in line}}
print(json.dumps({{
    "python": "%d.%d" % sys.version_info[:2],
    "results": results,
    "modules": sorted(sys.modules),
    "libs": sorted(libs),
}}))
"""


@pytest.mark.parametrize("runtime", list(packaging.RUNTIMES))
def test_unzipped_package_renders_every_syntax_on_the_runtime_python(
    runtime: str, tmp_path: Path, package_for: Callable[[str, str], Path]
) -> None:
    corpus = require_corpus()
    version = packaging.RUNTIMES[runtime]
    python = packaging.runtime_python(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter on this machine (PATH, pyenv or uv)")
    task = tmp_path / "task"
    with zipfile.ZipFile(package_for(runtime, "x86_64")) as archive:
        archive.extractall(task)
    script = RENDER_CHECK.format(package=str(task), cases=RENDER_CASES, corpus=str(corpus))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "LAMBDA_TASK_ROOT": str(task)}
    # -I -S: no site-packages of the host interpreter, like the Lambda runtime;
    # -B: /var/task is read-only, so nothing may rely on writing bytecode.
    result = subprocess.run(
        [python, "-I", "-S", "-B", "-c", script],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["python"] == version
    for name, fmt in RENDER_CASES:
        outcome = report["results"][name]
        if name == "will-jxl.dcm" and outcome[0] != fmt:
            assert outcome == ["UnsupportedTransferSyntax", 415], outcome
            continue
        assert outcome[0] == fmt and outcome[1] > 0, (name, outcome)
    # Every binary came from the package, and the package ships no codec that
    # rendering all the syntaxes left unloaded.
    loaded = [Path(p) for p in report["libs"]]
    assert not [p for p in loaded if "site-packages" in p.parts]
    shipped_codecs = {p.name for p in (task / "imagecodecs").glob("_*.so")}
    shipped_libs = {p.name for p in (task / "imagecodecs.libs").iterdir()}
    loaded_names = {p.name for p in loaded}
    if report["results"]["will-jxl.dcm"][0] == "jpg":
        assert shipped_codecs <= loaded_names, shipped_codecs - loaded_names
        assert shipped_libs <= loaded_names, shipped_libs - loaded_names
