"""Make the reference renderings of the bundled test files with dcmtk.

The project's own fidelity test (tests/test_fidelity.py) renders DICOM files that
ship inside pydicom's wheel and compares them with the PNGs in this folder. The
PNGs are committed; this script is how they were made, so anyone can check or
remake them:

    apt-get install dcmtk libgdcm-tools     # dcmtk 3.6.7, GDCM 3.0.21 on Debian 12
    .venv/bin/python tests/references/make_references.py

Rules, the same as for the shared corpus (../shared/dicom-corpus/README.md):

1. Decoder: ``dcml2pnm`` for JPEG-LS, ``dcmj2pnm`` for everything else. dcmtk has
   no JPEG 2000 decoder, so those files are first decompressed with
   ``gdcmconv --raw`` and then rendered by ``dcm2pnm``.
2. Grayscale VOI: ``+Wi 1`` when the file has Window Center/Width, else ``+Wl 1``
   when it has a VOI LUT Sequence, else ``+Wm`` (min-max). Colour: no VOI option.
3. ``-O`` (no overlays) where the file has overlay planes.
4. ``+on``: 8-bit grey or 24-bit RGB PNG of the first frame, no scaling.

MANIFEST.tsv records, per file, the pydicom test file name, its sha256 and the
exact command.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

HERE = Path(__file__).resolve().parent

# pydicom test files, chosen to cover every transfer syntax and photometric
# interpretation the converter handles.
FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPGExtended.dcm",
    "JPEGLSNearLossless_16.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_16bit.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "ExplVR_BigEnd.dcm",
    "examples_palette.dcm",
    "examples_ybr_color.dcm",
    "examples_overlay.dcm",
    "liver_1frame.dcm",
    "image_dfl.dcm",
    "rtdose.dcm",
)

JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


def voi_options(ds: pydicom.Dataset) -> list[str]:
    if ds.get("SamplesPerPixel", 1) != 1 or ds.get("PhotometricInterpretation") not in (
        "MONOCHROME1",
        "MONOCHROME2",
    ):
        return []
    if ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
        return ["+Wi", "1"]
    if ds.get("VOILUTSequence"):
        return ["+Wl", "1"]
    return ["+Wm"]


def command_for(name: str, source: Path, work: Path) -> tuple[list[list[str]], Path]:
    ds = pydicom.dcmread(source, force=True)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    options = voi_options(ds)
    if any(0x6000 <= tag.group <= 0x601E and tag.element == 0x3000 for tag in ds.keys()):  # noqa: SIM118
        options.append("-O")
    target = HERE / f"{Path(name).stem}.dcmtk.png"
    if syntax in JPEG_2000:
        raw = work / name
        return [
            ["gdcmconv", "--raw", str(source), str(raw)],
            ["dcm2pnm", *options, "+on", str(raw), str(target)],
        ], target
    tool = "dcml2pnm" if syntax in JPEG_LS else "dcmj2pnm"
    return [[tool, *options, "+on", str(source), str(target)]], target


def main() -> int:
    for tool in ("dcmj2pnm", "dcml2pnm", "dcm2pnm", "gdcmconv"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install dcmtk libgdcm-tools", file=sys.stderr)
            return 1
    rows = ["file\tsha256\tcommand\treference"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in FILES:
            source = Path(get_testdata_file(name, download=False))
            commands, target = command_for(name, source, Path(tmp))
            for command in commands:
                subprocess.run(command, check=True)
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
            shown = " && ".join(
                " ".join(Path(a).name if "/" in a else a for a in c) for c in commands
            )
            rows.append(f"{name}\t{digest}\t{shown}\t{target.name}")
            print(f"{name} -> {target.name}")
    (HERE / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
