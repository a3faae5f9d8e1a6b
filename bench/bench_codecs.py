"""Codec benchmark: the renderer against dcmtk, every syntax, thumbnails and peak RSS.

    .venv/bin/python bench/bench_codecs.py [--repeat 9] [--corpus DIR]   # or: make bench-codecs

Everything runs on one machine in one run; each comparison alternates its two
sides (ours, then the other, ``--repeat`` times) so that drift in the machine's
speed hits both, and the figures are medians in milliseconds.

1. Warm in-process ``dicom_converter.render(path)`` (JPEG output, default options)
   against dcmtk's whole ``dcmj2pnm +oj +Wm`` process (JPEG output; ``dcml2pnm +op
   +Wm``, 8-bit PNM, for JPEG-LS, which dcmj2pnm cannot read), on GH133,
   CR-ModalitySequenceLUT, RG2_JPLY_fixed, a 3.6 MP CR stored as JPEG lossless
   (RG2's pixels cropped to 2048 x 1760, built here) and the 512 x 512 CTs.
   Targets: <= 0.6x on the large images, <= 0.15x on the CTs.
2. The GH133 pixels (7.3 MP, 12 bits) re-encoded at bench time in every syntax:
   native, RLE (pydicom's encoder), JPEG lossless SV1, JPEG-LS, JPEG 2000 and
   HTJ2K (imagecodecs' encoders, all lossless), each rendered warm. Targets:
   JPEG-LS <= 1.5x and HTJ2K <= 1.0x the JPEG-lossless render.
3. A 256-pixel thumbnail (``RenderOptions(width=256, height=256)``) against the
   full render of the same file. Target <= 0.5x on JPEG 2000, HTJ2K, native and
   RLE; lossless JPEG and JPEG-LS cannot decode at reduced size and are reported.
4. Peak RSS of a whole CLI run on GH133 (``python dicom_converter.py GH133.dcm
   -o out.jpg``), read from the child's own ``ru_maxrss``. Target <= 120 MB.

The figures measure whatever decoders the tree uses: only the public API
(``dicom_converter.render``, ``RenderOptions``) is called.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import imagecodecs  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

import dicom_converter  # noqa: E402
from dicom_converter import RenderOptions  # noqa: E402

warnings.filterwarnings("ignore")

COMMAND = ".venv/bin/python bench/bench_codecs.py"
THUMBNAIL = RenderOptions(width=256, height=256)
LARGE = ("GH133", "CR-ModalitySequenceLUT", "RG2_JPLY_fixed")
CTS = ("GH1308", "CT-JPEGLosslessSV1", "CT1_JLSN")
JPEG_LS_UIDS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
RSS_TARGET_MB = 120


@dataclass(frozen=True)
class Row:
    case: str
    ours: float
    other: float | None
    target: float | None

    @property
    def ratio(self) -> float | None:
        return None if self.other is None else self.ours / self.other

    def cells(self) -> str:
        ratio = self.ratio
        if ratio is None or self.target is None:
            verdict = "report" if ratio is not None else "-"
        else:
            verdict = "yes" if ratio <= self.target else "**no**"
        target = f"<= {self.target}x" if self.target is not None else "-"
        other = "-" if self.other is None else f"{self.other:.1f}"
        shown = "-" if ratio is None else f"{ratio:.2f}x"
        return f"| {self.case} | {self.ours:.1f} | {other} | {shown} | {target} | {verdict} |"


def timed_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def alternate(
    ours: Callable[[], object], other: Callable[[], object], repeat: int
) -> tuple[float, float]:
    """Medians of ``ours`` and ``other``, run in turn so both see the same machine."""
    ours(), other()  # warm: imports, codec tables, the page cache
    a, b = [], []
    for _ in range(repeat):
        a.append(timed_ms(ours))
        b.append(timed_ms(other))
    return statistics.median(a), statistics.median(b)


def render(path: Path, options: RenderOptions | None = None) -> Callable[[], object]:
    return lambda: dicom_converter.render(path, options)


# --------------------------------------------------------------------------- files


def write_variant(base: pydicom.Dataset, pixels: np.ndarray, syntax: str, dest: Path) -> Path:
    """``base`` with ``pixels`` stored in ``syntax``; lossless encoders only."""
    ds = copy.deepcopy(base)
    ds.Rows, ds.Columns = pixels.shape
    bits = int(ds.BitsStored)
    if syntax == RLELossless:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = pixels.tobytes()
        ds.compress(RLELossless, pixels, encoding_plugin="pydicom")
    elif syntax == ExplicitVRLittleEndian:
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
    else:
        if syntax == JPEGLosslessSV1:
            stream = imagecodecs.jpeg8_encode(
                pixels, lossless=True, predictor=1, bitspersample=bits
            )
        elif syntax == JPEGLSLossless:
            stream = imagecodecs.jpegls_encode(pixels)
        elif syntax == JPEG2000Lossless:
            stream = imagecodecs.jpeg2k_encode(
                pixels, level=0, codecformat="j2k", reversible=True, bitspersample=bits
            )
        elif syntax == HTJ2KLossless:
            stream = imagecodecs.htj2k_encode(pixels, reversible=True)
        else:
            raise ValueError(syntax)
        ds.PixelData = encapsulate([bytes(stream)])
        ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(dest, enforce_file_format=True)
    return dest


def stored_pixels(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    ds = pydicom.dcmread(path)
    return ds, np.ascontiguousarray(ds.pixel_array)


def cr_3_6_mp(corpus: Path, folder: Path) -> Path:
    """RG2's CR pixels cropped to 2048 x 1760 (3.6 MP), stored as JPEG lossless SV1."""
    base, pixels = stored_pixels(corpus / "RG2_JPLY_fixed.dcm")
    rows, columns = pixels.shape
    crop = pixels[(rows - 2048) // 2 : (rows - 2048) // 2 + 2048, : min(columns, 1760)]
    return write_variant(base, np.ascontiguousarray(crop), JPEGLosslessSV1, folder / "CR-3.6MP.dcm")


SYNTAXES = {
    "native": ExplicitVRLittleEndian,
    "RLE": RLELossless,
    "JPEG lossless": JPEGLosslessSV1,
    "JPEG-LS": JPEGLSLossless,
    "JPEG 2000": JPEG2000Lossless,
    "HTJ2K": HTJ2KLossless,
}


def every_syntax(corpus: Path, folder: Path) -> dict[str, Path]:
    base, pixels = stored_pixels(corpus / "GH133.dcm")
    return {
        name: write_variant(base, pixels, uid, folder / f"GH133-{name.replace(' ', '_')}.dcm")
        for name, uid in SYNTAXES.items()
    }


# --------------------------------------------------------------------------- dcmtk


def dcmtk_command(path: Path, out: Path) -> list[str] | None:
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    command = ["dcml2pnm", "+op"] if syntax in JPEG_LS_UIDS else ["dcmj2pnm", "+oj"]
    if shutil.which(command[0]) is None:
        return None
    command += ["+Wm", str(path), str(out)]
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        return None
    return command


# --------------------------------------------------------------------------- RSS


LAUNCHER = """
import os, sys
argv = sys.argv[1:]
pid = os.posix_spawn(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def cli_peak_rss_mb(path: Path, out: Path) -> float:
    """ru_maxrss of the CLI process, spawned from a small launcher.

    Linux carries a process's peak RSS across fork and exec, so a child spawned
    straight from this (large) process would report this process's peak; the
    launcher's own peak (~10 MB) is the floor instead.
    """
    child = [sys.executable, str(PROJECT / "dicom_converter.py"), str(path), "-o", str(out)]
    done = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, *child],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    )
    # The CLI's own output comes first; the launcher's line is the last.
    code, kilobytes = done.stdout.splitlines()[-1].split()
    if code != "0":
        raise RuntimeError(f"the CLI failed on {path.name}")
    return int(kilobytes) / 1024


# --------------------------------------------------------------------------- report


def table(title: str, header: tuple[str, str], rows: list[Row]) -> str:
    lines = [
        f"**{title}**",
        "",
        f"| case | {header[0]} ms | {header[1]} ms | ratio | target | met |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    return "\n".join([*lines, *(row.cells() for row in rows), ""])


def checked(path: Path) -> bool:
    try:
        dicom_converter.render(path)
    except Exception as exc:  # refused (ServiceError) or broken: leave the variant out
        print(f"  {path.name}: not rendered ({type(exc).__name__}: {exc})", file=sys.stderr)
        return False
    return True


def guarded(case: str, measure: Callable[..., Row], *args: object) -> list[Row]:
    """One row, or none when the tree cannot render the case (reported on stderr)."""
    try:
        return [measure(*args)]
    except Exception as exc:  # a failing case must not hide the others' figures
        print(f"  {case}: failed ({type(exc).__name__}: {exc})", file=sys.stderr)
        return []


def against_dcmtk(name: str, path: Path, target: float, repeat: int, out: Path) -> Row:
    command = dcmtk_command(path, out)
    if command is None:
        ours = statistics.median(timed_ms(render(path)) for _ in range(repeat))
        return Row(f"{name} (dcmtk cannot)", ours, None, target)
    ours, dcmtk = alternate(
        render(path),
        lambda: subprocess.run(command, capture_output=True, check=True),
        repeat,
    )
    return Row(f"{name} vs `{command[0]} {command[1]}`", ours, dcmtk, target)


def against(
    case: str, ours: Callable[[], object], other: Callable[[], object] | None,
    target: float | None, repeat: int,
) -> Row:  # fmt: skip
    if other is None:
        return Row(case, statistics.median(timed_ms(ours) for _ in range(repeat)), None, None)
    return Row(case, *alternate(ours, other, repeat), target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--corpus", type=Path, default=PROJECT.parent / "shared" / "dicom-corpus")
    args = parser.parse_args()
    corpus: Path = args.corpus
    repeat: int = args.repeat
    if not (corpus / "GH133.dcm").is_file():
        print(f"no corpus in {corpus}; pass --corpus DIR", file=sys.stderr)
        return 2

    print(
        f"`{COMMAND} --repeat {repeat}`: python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores; medians of {repeat} "
        "alternating runs, ms\n",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-codecs-") as temp:
        folder = Path(temp)
        out = folder / "dcmtk-out"
        large = {name: corpus / f"{name}.dcm" for name in LARGE}
        large["CR 3.6 MP, JPEG lossless"] = cr_3_6_mp(corpus, folder)
        cts = {f"{name} (512x512 CT)": corpus / f"{name}.dcm" for name in CTS}
        variants = {name: p for name, p in every_syntax(corpus, folder).items() if checked(p)}

        peers: list[Row] = []
        for name, path in [*large.items(), *cts.items()]:
            target = 0.6 if name not in cts else 0.15
            peers += guarded(name, against_dcmtk, name, path, target, repeat, out)
        print(table("Warm render vs dcmtk's whole process", ("ours", "dcmtk"), peers), flush=True)

        rows: list[Row] = []
        reference = variants.get("JPEG lossless")
        targets = {"JPEG-LS": 1.5, "HTJ2K": 1.0}
        for name, path in variants.items():
            other = None if name == "JPEG lossless" or reference is None else render(reference)
            case = f"GH133 pixels, {name}"
            rows += guarded(case, against, case, render(path), other, targets.get(name), repeat)
        print(
            table("The same 7.3 MP image in every syntax", ("render", "JPEG-lossless"), rows),
            flush=True,
        )

        rows = []
        thumb_targets = {"native": 0.5, "RLE": 0.5, "JPEG 2000": 0.5, "HTJ2K": 0.5}
        for name, path in variants.items():
            case = f"GH133 pixels, {name}"
            full = render(path)
            thumb = render(path, THUMBNAIL)
            rows += guarded(case, against, case, thumb, full, thumb_targets.get(name), repeat)
        print(table("256-pixel thumbnail vs full render", ("thumbnail", "full"), rows), flush=True)

        try:
            rss = statistics.median(
                cli_peak_rss_mb(corpus / "GH133.dcm", folder / "cli.jpg") for _ in range(3)
            )
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"Peak RSS: the CLI run failed ({exc})")
            return 1
    verdict = "yes" if rss <= RSS_TARGET_MB else "**no**"
    print(
        f"Peak RSS of `python dicom_converter.py GH133.dcm -o out.jpg` (median of 3): "
        f"**{rss:.0f} MB** (target <= {RSS_TARGET_MB} MB: {verdict})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
