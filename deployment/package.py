"""The deployment zip: the runtime modules, lambda_config.json and the dependencies.

What ships is an explicit list, not "every top-level file except tools": a new tool
stays out, and a new runtime module must be added here (tests/test_deploy.py fails
when the handler imports a project module this list does not name).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from deployment.errors import DeployError
from deployment.report import Report, megabytes

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONFIG_PATH = PROJECT_DIR / "lambda_config.json"
REQUIREMENTS = PROJECT_DIR / "requirements.txt"
BUILD_DIR = PROJECT_DIR / "build"
WHEEL_CACHE = BUILD_DIR / "wheel-cache"

HANDLER = "lambda_function.lambda_handler"
HANDLER_MODULE = "lambda_function.py"

# Every project module the function imports, and nothing else: tools such as
# local_api.py, demo.py and deploy.py never ship.
RUNTIME_MODULES = (
    "lambda_function",
    "convert_api",
    "delivery",
    "render_cache",
    "pipeline",
    "bulk",
    "notifications",
    "dicom_converter",
    "render_options",
    "frame_sequences",
    "image_output",
    "dicom_dataset",
    "dicom_codecs",
    "frame_decoders",
    "codestream",
    "lookup_tables",
    "playground",
    "file_downloader",
    "download_limits",
    "ranged_reads",
    "frame_fetch",
    "url_policy",
    "s3_store",
    "service_log",
    "temp_cleaner",
    "settings",
    "errors",
)
RUNTIME_DATA = ("lambda_config.json", "playground.html")

# Runtime name -> Python version; python3.9 cannot run pydicom 3 and is deprecated.
RUNTIMES = {"python3.12": "3.12", "python3.13": "3.13"}
ARCHITECTURES = ("x86_64", "arm64")
# Lambda's arm64 is the manylinux "aarch64" platform.
PLATFORM_MACHINE = {"x86_64": "x86_64", "arm64": "aarch64"}
# ELF e_machine values, used to prove a package's binaries fit the architecture.
ELF_MACHINE = {"x86_64": 62, "arm64": 183}

# The Lambda Python runtime ships these; nothing else in requirements.txt needs them.
RUNTIME_PROVIDED = {"boto3", "botocore", "s3transfer"}

# imagecodecs bundles about sixty codecs; the service decodes through these
# extension modules only (libjpeg-turbo, CharLS, OpenJPEG, OpenJPH, libjxl and the
# Cython runtime they share). The rest, and the libraries only they link, stay out.
IMAGECODECS_KEPT = frozenset(
    {"_shared", "_shared_cython", "_jpeg8", "_jpegls", "_jpeg2k", "_htj2k", "_jpegxl"}
)
# Pillow extension modules the service never loads: AVIF, fonts, Tk, colour
# management, ImageMath and ImageMorph. Pillow imports each of them lazily or
# inside try/except, so the JPEG, PNG, WebP and GIF writers work without them.
PILLOW_UNUSED = (
    "_avif",
    "_imagingft",
    "_imagingtk",
    "_imagingcms",
    "_imagingmath",
    "_imagingmorph",
)
# numpy's own test and SIMD-introspection extension modules.
NUMPY_TEST_EXTENSIONS = (
    "_multiarray_tests",
    "_operand_flag_tests",
    "_rational_tests",
    "_struct_ufunc_tests",
    "_umath_tests",
    "_simd",
)
# Build-time and tooling parts of the dependencies, never imported by the service.
UNUSED_PATHS = (
    "numpy/f2py",
    "numpy/_pyinstaller",
    "numpy/_core/include",
    "numpy/_core/lib",
    "numpy/random/_examples",
    "imagecodecs/numcodecs.py",
    "imagecodecs/zarr.py",
    "imagecodecs/__main__.py",
    "pydicom/benchmarks",
)
# Type stubs, Cython declarations and C headers.
UNUSED_SUFFIXES = (".pyi", ".pxd", ".pyx", ".h")
# pydicom's test data, except the files pydicom.examples looks up when pydicom is
# imported: without them that import would try to download them.
PYDICOM_TEST_FILES = "pydicom/data/test_files"
PYDICOM_EXAMPLES = "pydicom/examples/__init__.py"

MAX_UNZIPPED_BYTES = 262_144_000  # Lambda's 250 MB limit for a function's unzipped code
DIRECT_UPLOAD_LIMIT = 50 * 1024 * 1024  # larger zips must go through S3
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
LAMBDA_TASK_ROOT = "/var/task"  # where Lambda unpacks the zip; names in tracebacks


@dataclass(frozen=True)
class Package:
    path: Path
    zipped_bytes: int
    unzipped_bytes: int
    files: int
    sha256_hex: str
    bytecode: bool = False  # ships .pyc files compiled for the runtime's Python

    @property
    def code_sha256(self) -> str:
        """The digest in the form Lambda reports as CodeSha256."""
        return base64.b64encode(bytes.fromhex(self.sha256_hex)).decode("ascii")

    @property
    def size_text(self) -> str:
        return (
            f"{megabytes(self.zipped_bytes)} zipped, {megabytes(self.unzipped_bytes)} "
            f"unzipped, {self.files} files"
        )


def package_path(runtime: str, arch: str) -> Path:
    return BUILD_DIR / f"dicom-lambda-{runtime}-{arch}.zip"


def lambda_requirements(source: Path = REQUIREMENTS) -> list[str]:
    """requirements.txt without what the Lambda runtime already provides."""
    kept = []
    for line in source.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", text)
        name = match.group(1).lower().replace("_", "-") if match else ""
        if name not in RUNTIME_PROVIDED:
            kept.append(text)
    return kept


def pip_platform_args(runtime: str, arch: str) -> list[str]:
    """Target the Lambda platform whatever the host: manylinux wheels only.

    manylinux_2_28 comes first because manylinux2014 alone silently resolves to
    old numpy/Pillow releases that still published manylinux2014 wheels.
    """
    machine = PLATFORM_MACHINE[arch]
    return [
        "--platform", f"manylinux_2_28_{machine}",
        "--platform", f"manylinux2014_{machine}",
        "--only-binary=:all:",
        "--python-version", RUNTIMES[runtime],
        "--implementation", "cp",
    ]  # fmt: skip


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    )


def install_dependencies(requirements: Path, target: Path, runtime: str, arch: str) -> None:
    """Install into ``target`` from the wheel cache, downloading only what is missing."""
    platform = pip_platform_args(runtime, arch)
    install = ["install", "--quiet", "--no-compile", "--target", str(target), *platform]
    offline = [*install, "--no-index", "--find-links", str(WHEEL_CACHE), "-r", str(requirements)]
    if WHEEL_CACHE.is_dir() and _pip(*offline).returncode == 0:
        return
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    print(f"      downloading wheels into {relative(WHEEL_CACHE)}", flush=True)
    download = _pip("download", "--quiet", "--dest", str(WHEEL_CACHE), *platform,
                    "-r", str(requirements))  # fmt: skip
    if download.returncode != 0:
        raise DeployError(f"pip download failed:\n{download.stderr.strip()}")
    shutil.rmtree(target, ignore_errors=True)
    result = _pip(*offline)
    if result.returncode != 0:
        raise DeployError(f"pip install failed:\n{result.stderr.strip()}")


def prune(root: Path) -> None:
    """Drop what the function never loads: scripts, tests, caches, install records."""
    shutil.rmtree(root / "bin", ignore_errors=True)
    for name in RUNTIME_PROVIDED:
        shutil.rmtree(root / name, ignore_errors=True)
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir() and path.name in ("__pycache__", "tests"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.suffix in (".pyc", ".pyo"):
            path.unlink(missing_ok=True)
        elif path.parent.name.endswith(".dist-info") and path.name in (
            "RECORD",
            "INSTALLER",
            "REQUESTED",
            "direct_url.json",
        ):
            # RECORD lists every file with its hash; METADATA and entry_points.txt
            # stay because pylibjpeg finds its decoders through entry points.
            path.unlink(missing_ok=True)
    for dist_info in root.glob("*.dist-info"):
        name = dist_info.name.split("-", 1)[0].lower().replace("_", "-")
        if name in RUNTIME_PROVIDED:
            shutil.rmtree(dist_info)
    prune_unused_parts(root)
    prune_bundled_libraries(root)


def _extension_stem(path: Path) -> str:
    """``_jpeg8`` for ``_jpeg8.abi3.so`` or ``_jpeg8.cpython-312-x86_64-linux-gnu.so``."""
    return path.name.split(".", 1)[0]


def prune_unused_parts(root: Path) -> None:
    """Leave out codecs, extension modules, tools and data the service never loads."""
    codecs = root / "imagecodecs"
    for path in codecs.glob("_*.so") if codecs.is_dir() else ():
        if _extension_stem(path) not in IMAGECODECS_KEPT:
            path.unlink()
    for path in (root / "PIL").glob("_*.so") if (root / "PIL").is_dir() else ():
        if _extension_stem(path) in PILLOW_UNUSED:
            path.unlink()
    for path in (root / "numpy" / "_core").glob("_*.so"):
        if _extension_stem(path) in NUMPY_TEST_EXTENSIONS:
            path.unlink()
    for relative_path in UNUSED_PATHS:
        target = root / relative_path
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    for path in root.rglob("*"):
        if path.suffix in UNUSED_SUFFIXES and path.is_file():
            path.unlink()
    prune_pydicom_test_files(root)


def prune_pydicom_test_files(root: Path) -> None:
    test_files, examples = root / PYDICOM_TEST_FILES, root / PYDICOM_EXAMPLES
    if not test_files.is_dir():
        return
    wanted = set()
    if examples.is_file():
        wanted = set(re.findall(r"get_testdata_file\(\s*[\"']([^\"']+)[\"']", examples.read_text()))
    for path in sorted(test_files.rglob("*"), reverse=True):
        if path.is_file() and path.name not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
ELF_PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
ELF_DYNAMIC_ENTRY = struct.Struct("<qQ")
PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5


def needed_libraries(data: bytes) -> list[str] | None:
    """The DT_NEEDED names of a 64-bit little-endian ELF file, read as the loader does.

    None when ``data`` is not an ELF file. Lambda's x86_64 and aarch64 are both
    64-bit little-endian; any other ELF file stops the build.
    """
    if len(data) < ELF_HEADER.size or data[:4] != b"\x7fELF":
        return None
    if data[4:6] != b"\x02\x01":
        raise DeployError("a bundled library is not a 64-bit little-endian ELF file")
    header = ELF_HEADER.unpack_from(data)
    phoff, phentsize, phnum = header[5], header[9], header[10]
    segments = [ELF_PROGRAM_HEADER.unpack_from(data, phoff + i * phentsize) for i in range(phnum)]

    def file_offset(address: int) -> int:
        for kind, _, offset, vaddr, _, filesz, _, _ in segments:
            if kind == PT_LOAD and vaddr <= address < vaddr + filesz:
                return address - vaddr + offset
        raise ValueError("address outside every loaded segment")

    dynamic = next((s for s in segments if s[0] == PT_DYNAMIC), None)
    if dynamic is None:
        return []  # statically linked
    entries = []
    for index in range(dynamic[5] // ELF_DYNAMIC_ENTRY.size):
        tag, value = ELF_DYNAMIC_ENTRY.unpack_from(
            data, dynamic[2] + index * ELF_DYNAMIC_ENTRY.size
        )
        if tag == DT_NULL:
            break
        entries.append((tag, value))
    strtab = file_offset(next(value for tag, value in entries if tag == DT_STRTAB))
    names = []
    for tag, value in entries:
        if tag == DT_NEEDED:
            start = strtab + value
            names.append(data[start : data.index(b"\0", start)].decode("ascii"))
    return names


def prune_bundled_libraries(root: Path) -> None:
    """Drop libraries in ``*.libs`` folders that no remaining extension module needs.

    auditwheel copies every library a wheel links into ``<name>.libs``; once unused
    extension modules are gone, some of those libraries have no user left.
    """
    bundled = {path.name: path for folder in root.glob("*.libs") for path in folder.iterdir()}
    if not bundled:
        return
    todo = [p for p in root.rglob("*.so*") if p.is_file() and p.parent.suffix != ".libs"]
    reached: set[str] = set()
    while todo:
        for name in needed_libraries(todo.pop().read_bytes()) or ():
            if name in bundled and name not in reached:
                reached.add(name)
                todo.append(bundled[name])
    for name, path in bundled.items():
        if name not in reached:
            path.unlink()


def project_files(
    root: Path = PROJECT_DIR,
    modules: tuple[str, ...] = RUNTIME_MODULES,
    data: tuple[str, ...] = RUNTIME_DATA,
) -> list[Path]:
    """The function's own modules and data files, exactly as listed; each must exist."""
    files = [root / f"{module}.py" for module in modules] + [root / name for name in data]
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise DeployError(
            f"runtime file(s) missing from {root}: {', '.join(missing)}. Each name in "
            "RUNTIME_MODULES / RUNTIME_DATA (deployment/package.py) must exist; "
            "restore the file or take it off that list"
        )
    return files


def write_zip(source: Path, dest: Path) -> None:
    """A reproducible zip: sorted entries, fixed timestamps and Unix permissions."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    entries = sorted(
        (p for p in source.rglob("*") if p.is_file()),
        key=lambda p: p.relative_to(source).as_posix(),
    )
    # A private temporary name, so concurrent builds never write into one file.
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in entries:
            info = zipfile.ZipInfo(path.relative_to(source).as_posix(), date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so permissions mean the same on every host
            mode = 0o755 if ".so" in path.suffixes else 0o644
            info.external_attr = (0o100000 | mode) << 16
            archive.writestr(info, path.read_bytes(), compresslevel=6)
    partial.replace(dest)


def describe_zip(path: Path) -> Package:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    with zipfile.ZipFile(path) as archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
    return Package(
        path=path,
        zipped_bytes=path.stat().st_size,
        unzipped_bytes=sum(info.file_size for info in infos),
        files=len(infos),
        sha256_hex=digest.hexdigest(),
        bytecode=any(info.filename.endswith(".pyc") for info in infos),
    )


def runtime_python(version: str) -> str | None:
    """An interpreter of exactly this version: on PATH, from pyenv, or from uv."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{version}") or ""]
    candidates += [str(p) for p in sorted(pyenv_root.glob(f"versions/{version}.*/bin/python3"))]
    if shutil.which("uv"):
        found = subprocess.run(
            ["uv", "python", "find", "--no-project", version],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        candidates.append(found.stdout.strip() if found.returncode == 0 else "")
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def compile_bytecode(root: Path, runtime: str) -> bool:
    """Compile every module to .pyc with the runtime's own Python, if there is one here.

    /var/task is read-only, so without shipped bytecode every cold start compiles
    numpy, pydicom and Pillow from source: about 0.5 s of the first /convert.
    Unchecked hash-based .pyc files (PEP 552) carry no timestamps, so builds stay
    reproducible, and the import never reads the source to validate them.
    """
    python = runtime_python(RUNTIMES[runtime])
    if python is None:
        return False
    subprocess.run(
        [python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
         "-s", str(root), "-p", LAMBDA_TASK_ROOT, str(root)],
        capture_output=True, check=False,
    )  # fmt: skip
    return True


def elf_machine(head: bytes) -> int | None:
    """The e_machine field of an ELF header, or None for other files."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    byteorder = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[18:20], byteorder)


def check_package(package: Package, runtime: str, arch: str) -> None:
    """Refuse a zip Lambda would reject or could not run on this runtime/arch."""
    if package.unzipped_bytes > MAX_UNZIPPED_BYTES:
        raise DeployError(
            f"package is {megabytes(package.unzipped_bytes)} unzipped; Lambda allows "
            f"{megabytes(MAX_UNZIPPED_BYTES)}. Trim requirements.txt or use a container image."
        )
    wanted_abi = f".cpython-{RUNTIMES[runtime].replace('.', '')}-"
    with zipfile.ZipFile(package.path) as archive:
        names = set(archive.namelist())
        if HANDLER_MODULE not in names:
            raise DeployError(f"{package.path.name} has no {HANDLER_MODULE} at its root")
        for name in sorted(names):
            if ".so" not in Path(name).suffixes:
                continue
            with archive.open(name) as member:
                machine = elf_machine(member.read(20))
            if machine is not None and machine != ELF_MACHINE[arch]:
                raise DeployError(f"{name} is not built for {arch}; rebuild with --arch {arch}")
            if ".cpython-3" in name and wanted_abi not in name:
                raise DeployError(f"{name} is not built for {runtime}")


def build_package(runtime: str, arch: str, dest: Path | None = None) -> Package:
    """Build the deployment zip for the Lambda platform in a clean folder."""
    if not (PROJECT_DIR / HANDLER_MODULE).is_file():
        raise DeployError(f"{HANDLER_MODULE} is missing; the handler is {HANDLER}")
    files = project_files()
    with tempfile.TemporaryDirectory(prefix="dicom-lambda-build-") as tmp:
        staging = Path(tmp) / "package"
        requirements = Path(tmp) / "requirements.lambda.txt"
        requirements.write_text("\n".join(lambda_requirements()) + "\n", encoding="utf-8")
        install_dependencies(requirements, staging, runtime, arch)
        prune(staging)
        for path in files:
            shutil.copy2(path, staging / path.name)
        compile_bytecode(staging, runtime)
        dest = dest or package_path(runtime, arch)
        write_zip(staging, dest)
    return describe_zip(dest)


def obtain_package(
    runtime: str, arch: str, given: Path | None, output: Path | None, report: Report
) -> Package:
    """The zip to deploy: ``given`` as it is, or a fresh build; checked either way."""
    if given is not None:
        report.note(f"using {relative(given)}")
        package = describe_zip(given)
    else:
        report.note(
            f"building for {runtime} on manylinux {PLATFORM_MACHINE[arch]} "
            f"from {REQUIREMENTS.name} (wheel cache: {relative(WHEEL_CACHE)})"
        )
        package = build_package(runtime, arch, output)
        report.note(f"wrote {relative(package.path)}")
    check_package(package, runtime, arch)
    report.note(f"package: {package.size_text}, sha256 {package.sha256_hex[:12]}")
    if not package.bytecode:
        report.note(
            f"no bytecode: no Python {RUNTIMES[runtime]} was found here to compile it, so "
            "each cold start compiles numpy, pydicom and Pillow (about 0.5 s more)"
        )
    if package.zipped_bytes > DIRECT_UPLOAD_LIMIT:
        report.note("over 50 MB zipped: the code goes to Lambda through S3")
    return package


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
