"""Benchmark the renderer against a plain pydicom pipeline, the codec floor and dcmtk.

    .venv/bin/python bench/bench_render.py [--repeat 5] [--corpus DIR] [FILE ...]

For every file (default: the shared corpus, else pydicom's bundled references)
it reports median wall times, in milliseconds, of:

- ours:  dicom_converter.render(path) to JPEG (default options);
- plain: dcmread → pixel_array → apply_modality_lut → apply_voi_lut →
         float min–max scaling → Pillow JPEG (what a hand-rolled script does;
         nan where pydicom has no decoder installed for the syntax);
- floor: decoding the frame (with the service's codecs) plus encoding an 8-bit
         image of the same size, the work no renderer can avoid;
- over:  (ours − floor) / ours, the share of time spent beyond the floor;
- dcmtk: the whole `dcmj2pnm +oj` process, when dcmtk is installed.

It then runs the CLI on the largest file in a child process and reports the
peak RSS of that whole process, ours and plain.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from PIL import Image  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: E402

import dicom_converter  # noqa: E402
import dicom_dataset  # noqa: E402
from errors import ServiceError  # noqa: E402

warnings.filterwarnings("ignore")


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def plain_pipeline(path: Path) -> bytes:
    ds = pydicom.dcmread(path, force=True)
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    if ds.get("SamplesPerPixel", 1) == 1:
        arr = apply_modality_lut(arr, ds)
        arr = apply_voi_lut(arr, ds)
        arr = arr.astype(np.float64)
        lo, hi = arr.min(), arr.max()
        arr = (arr - lo) / max(hi - lo, 1e-9) * 255.0
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            arr = 255.0 - arr
    out = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(out, "JPEG", quality=85)
    return out.getvalue()


def floor_pipeline(path: Path) -> Callable[[], object]:
    # The frame decoded by the service's own codecs (the fastest it has), plus an
    # 8-bit encode of the same size: the work no renderer of this file can avoid.
    budget = dicom_converter.RenderLimits().max_pixel_bytes
    ds = dicom_dataset.read_dataset(path, budget)
    module = dicom_dataset.image_pixel_module(ds, budget)
    frame = dicom_dataset.decode_frame(ds, 0, module)
    eight_bit = np.zeros(frame.shape, dtype=np.uint8)

    def run() -> None:
        dicom_dataset.decode_frame(ds, 0, module)
        Image.fromarray(eight_bit).save(io.BytesIO(), "JPEG", quality=85)

    return run


def dcmtk_ms(path: Path, repeat: int) -> float | None:
    """Whole-process time of dcmtk rendering the file to JPEG (PNG for JPEG-LS)."""
    meta = pydicom.dcmread(path, force=True, stop_before_pixels=True).file_meta
    syntax = str(meta.get("TransferSyntaxUID", ""))
    jpeg_ls = syntax in ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
    command = ["dcml2pnm", "+on"] if jpeg_ls else ["dcmj2pnm", "+oj"]
    if shutil.which(command[0]) is None:
        return None
    command += ["+Wm", str(path), "/dev/null"]
    if subprocess.run(command, capture_output=True).returncode != 0:
        return None
    return median_ms(lambda: subprocess.run(command, capture_output=True, check=True), repeat)


def peak_rss_mb(code: str) -> float:
    """Peak RSS of a fresh Python process that runs `code`, in MB.

    VmHWM belongs to the process's own memory map, which exec makes anew;
    getrusage's ru_maxrss would carry over this (larger) parent's peak.
    """
    probe = (
        code + "\nimport re\n"
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], check=True, cwd=PROJECT, capture_output=True, text=True
    )
    return int(done.stdout.split()[-1]) / 1024


def default_files(corpus: Path) -> list[Path]:
    if (corpus / "MANIFEST.tsv").exists():
        return sorted(corpus.glob("*.dcm"))
    from pydicom.data import get_testdata_file

    manifest = PROJECT / "tests" / "references" / "MANIFEST.tsv"
    names = [line.split("\t")[0] for line in manifest.read_text().splitlines()[1:]]
    return [Path(get_testdata_file(name, download=False)) for name in names]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--corpus", type=Path, default=PROJECT.parent / "shared" / "dicom-corpus")
    args = parser.parse_args()
    files = args.files or default_files(args.corpus)

    print(
        f"{'file':38s} {'pixels':>9s} {'ours':>8s} {'plain':>8s} {'floor':>8s} "
        f"{'over':>5s} {'x plain':>7s} {'dcmtk':>8s}"
    )
    largest: tuple[int, Path] | None = None
    for path in files:
        try:
            result = dicom_converter.render(path)
        except ServiceError as exc:
            print(f"{path.name:38s} refused: {type(exc).__name__}")
            continue
        pixels = result.width * result.height
        if largest is None or pixels > largest[0]:
            largest = (pixels, path)
        ours = median_ms(lambda p=path: dicom_converter.render(p), args.repeat)
        try:
            plain = median_ms(lambda p=path: plain_pipeline(p), args.repeat)
        except Exception:  # the plain pipeline fails on some files; that is the point
            plain = float("nan")
        floor = median_ms(floor_pipeline(path), args.repeat)
        dcmtk = dcmtk_ms(path, args.repeat)
        over = max(ours - floor, 0) / ours * 100
        speedup = plain / ours if plain == plain else float("nan")
        print(
            f"{path.name:38s} {pixels:9d} {ours:8.1f} {plain:8.1f} {floor:8.1f} "
            f"{over:4.0f}% {speedup:7.2f} {'' if dcmtk is None else f'{dcmtk:8.1f}'}"
        )

    if largest is not None:
        target = largest[1]
        plain_code = (
            "import sys, pathlib\nsys.path.insert(0, 'bench')\nimport bench_render\n"
            f"bench_render.plain_pipeline(pathlib.Path({str(target)!r}))"
        )
        ours_code = (
            "import dicom_converter\n"
            f"dicom_converter.main([{str(target)!r}, '-o', '/tmp/bench-rss.jpg'])"
        )
        ours_rss = peak_rss_mb(ours_code)
        try:
            plain_rss = f"{peak_rss_mb(plain_code):.0f} MB"
        except subprocess.CalledProcessError:
            # pydicom alone decodes only native and RLE data; compressed files need
            # plugins (pylibjpeg, gdcm) that this service does not install.
            plain_rss = "n/a (pydicom has no decoder for this transfer syntax here)"
        print(
            f"\npeak RSS of a whole run on {target.name}: ours (CLI) {ours_rss:.0f} MB, "
            f"plain pipeline {plain_rss}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
