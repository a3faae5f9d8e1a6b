"""Time and peak memory of multi-frame answers: animations and contact sheets.

    .venv/bin/python bench/bench_frames.py [--frames 100] [--size 512] [--repeat 3]
        [--width W] [--cases gif,webp,...] [FILE]

Without FILE it writes a synthetic 16-bit MONOCHROME2 cine (default 100
frames of 512 x 512, Frame Time 40 ms, no window, so the first frame's
min–max window is shared) to a temporary folder. Each case runs in its own
child process, which reports:

- ms:       median wall time of render() (the child renders `--repeat` times);
- peak MB:  the child's peak RSS (VmHWM) after rendering;
- base MB:  its RSS after importing the converter, before reading the file;
- out KB:   the answer's size.

Cases: one frame to PNG (the floor), all frames as GIF, WebP, PNG and JPG
contact sheets, and for comparison "webp-held": every frame rendered first
and held as a list, then Pillow's save_all (what streaming avoids; it ignores
--width).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

CHILD = r"""
import io, json, resource, statistics, sys, time
sys.path.insert(0, {project!r})
import numpy as np
from PIL import Image
import dicom_converter as dc

def rss_mb():
    # VmHWM, not ru_maxrss: the latter keeps the parent's peak across exec.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

case, path, repeat, width = {case!r}, {path!r}, {repeat}, {width!r}
base = rss_mb()
limits = dc.RenderLimits(max_pixel_bytes=1 << 30, max_frames=1000)

def held_webp():
    first = dc.render(path, dc.RenderOptions("png"), limits)
    window = dc.Window(first.window.center, first.window.width, first.window.function)
    frames = []
    for number in range(1, first.frames + 1):
        one = dc.render(path, dc.RenderOptions("png", frame=number, window=window), limits)
        frames.append(Image.open(io.BytesIO(one.image)).convert("L"))
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=40,
                   loop=0, quality=85, method=4)
    return buffer.getvalue()

def once():
    if case == "single-png":
        return dc.render(path, dc.RenderOptions("png", width=width), limits).image
    if case == "webp-held":
        return held_webp()
    fmt = case.split("-")[0]
    options = dc.RenderOptions(fmt, frames=dc.FrameRange(1, None), width=width)
    return dc.render(path, options, limits).image

times = []
for _ in range(repeat):
    start = time.perf_counter()
    data = once()
    times.append((time.perf_counter() - start) * 1000)
print(json.dumps({{"ms": statistics.median(times), "peak": rss_mb(), "base": base,
                  "out": len(data) / 1024}}))
"""

CASES = ("single-png", "gif", "webp", "png-sheet", "jpg-sheet", "webp-held")


def write_cine(folder: Path, frames: int, size: int) -> Path:
    sys.path.insert(0, str(PROJECT))
    import numpy as np

    from tests.dicom_files import image_dataset

    y, x = np.mgrid[0:size, 0:size]
    radius = np.hypot(x - size / 2, y - size / 2)
    first = (2000 + 1500 * np.cos(radius / 9.0)).astype(np.uint16)
    ds = image_dataset(first, NumberOfFrames=frames, FrameTime=40, Modality="US")
    stack = np.empty((frames, size, size), np.uint16)
    for index in range(frames):
        stack[index] = (2000 + 1500 * np.cos(radius / 9.0 - index / 3.0)).astype(np.uint16)
    ds.PixelData = stack.tobytes()
    path = folder / f"cine-{frames}x{size}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def run_case(case: str, path: Path, repeat: int, width: int | None) -> dict[str, float]:
    code = CHILD.format(project=str(PROJECT), case=case, path=str(path), repeat=repeat, width=width)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=900
    )
    if done.returncode != 0:
        raise SystemExit(f"{case} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--width", type=int, help="output width (a contact sheet's whole width)")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = args.file or write_cine(Path(folder), args.frames, args.size)
        print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB")
        print(f"{'case':<12} {'ms':>9} {'peak MB':>9} {'base MB':>9} {'out KB':>9}")
        for case in args.cases.split(","):
            row = run_case(case, path, args.repeat, args.width)
            print(
                f"{case:<12} {row['ms']:>9.0f} {row['peak']:>9.1f} "
                f"{row['base']:>9.1f} {row['out']:>9.0f}"
            )


if __name__ == "__main__":
    main()
