"""The one transfer-syntax table: each UID's name, family and decoder plugins.

This module stays light (no numpy, pydicom or Pillow at import time) because
GET /health reports the decodable syntaxes and codec versions from a cold
start: what is installed is found from import specs and ``.dist-info`` folder
names, never by importing a codec.

Each syntax lists the sets of modules with which pydicom 3 decodes it
(``pydicom.pixels.decoders``: the native decoders and the gdcm, pylibjpeg,
pillow, pyjpegls and rle plugins). Any one complete set is enough; every
decoder also needs pydicom and numpy.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

# Decoder plugins, as the module sets pydicom imports for them.
_BUILTIN: tuple[str, ...] = ()
_LIBJPEG = ("pylibjpeg", "libjpeg")
_OPENJPEG = ("pylibjpeg", "openjpeg")
_PYLIBJPEG_RLE = ("pylibjpeg", "rle")
_PILLOW = ("PIL",)
_GDCM = ("gdcm",)
_PYJPEGLS = ("jpeg_ls",)

# Module → the distribution that installs it, in the order /health lists them.
CODEC_DISTRIBUTIONS: dict[str, str] = {
    "pydicom": "pydicom",
    "numpy": "numpy",
    "pylibjpeg": "pylibjpeg",
    "libjpeg": "pylibjpeg-libjpeg",
    "openjpeg": "pylibjpeg-openjpeg",
    "rle": "pylibjpeg-rle",
    "PIL": "pillow",
    "gdcm": "python-gdcm",
    "jpeg_ls": "pyjpegls",
}


@dataclass(frozen=True)
class TransferSyntax:
    """One row of the table: a transfer syntax and what decodes it."""

    uid: str
    name: str
    family: str  # "native", "jpeg", "jpeg-ls", "jpeg2000", "htj2k", "rle", "jpeg-xl", "video"
    decoders: tuple[tuple[str, ...], ...]  # module sets; any complete one decodes it


def _row(uid: str, name: str, family: str, *decoders: tuple[str, ...]) -> TransferSyntax:
    return TransferSyntax(uid, name, family, decoders)


_JPEG_8_12 = (_LIBJPEG, _PILLOW, _GDCM)
_JPEG_LOSSLESS = (_LIBJPEG, _GDCM)
_JPEG_LS = (_LIBJPEG, _GDCM, _PYJPEGLS)
_J2K = (_OPENJPEG, _PILLOW, _GDCM)

# The order is the order /health lists decodable syntaxes in.
SYNTAXES: tuple[TransferSyntax, ...] = (
    _row(IMPLICIT_LE, "Implicit VR Little Endian", "native", _BUILTIN),
    _row(EXPLICIT_LE, "Explicit VR Little Endian", "native", _BUILTIN),
    _row(DEFLATED, "Deflated Explicit VR Little Endian", "native", _BUILTIN),
    _row(EXPLICIT_BE, "Explicit VR Big Endian", "native", _BUILTIN),
    _row(JPEG_BASELINE, "JPEG Baseline (Process 1)", "jpeg", *_JPEG_8_12),
    _row("1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 and 4)", "jpeg", *_JPEG_8_12),
    _row(
        "1.2.840.10008.1.2.4.57",
        "JPEG Lossless, Non-Hierarchical (Process 14)",
        "jpeg",
        *_JPEG_LOSSLESS,
    ),
    _row(
        "1.2.840.10008.1.2.4.70",
        "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])",
        "jpeg",
        *_JPEG_LOSSLESS,
    ),
    _row("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless Image Compression", "jpeg-ls", *_JPEG_LS),
    _row(
        "1.2.840.10008.1.2.4.81",
        "JPEG-LS Lossy (Near-Lossless) Image Compression",
        "jpeg-ls",
        *_JPEG_LS,
    ),
    _row(
        "1.2.840.10008.1.2.4.90", "JPEG 2000 Image Compression (Lossless Only)", "jpeg2000", *_J2K
    ),
    _row("1.2.840.10008.1.2.4.91", "JPEG 2000 Image Compression", "jpeg2000", *_J2K),
    _row(
        "1.2.840.10008.1.2.4.201",
        "High-Throughput JPEG 2000 Image Compression (Lossless Only)",
        "htj2k",
        _OPENJPEG,
    ),
    _row(
        "1.2.840.10008.1.2.4.202",
        "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)",
        "htj2k",
        _OPENJPEG,
    ),
    _row(
        "1.2.840.10008.1.2.4.203",
        "High-Throughput JPEG 2000 Image Compression",
        "htj2k",
        _OPENJPEG,
    ),
    _row("1.2.840.10008.1.2.5", "RLE Lossless", "rle", _BUILTIN, _PYLIBJPEG_RLE),
    # No decoder here; named so that an "unsupported" error can say what the
    # file is (pydicom's UID dictionary may not know them, or names them longer).
    _row("1.2.840.10008.1.2.4.110", "JPEG XL Lossless", "jpeg-xl"),
    _row("1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression", "jpeg-xl"),
    _row("1.2.840.10008.1.2.4.112", "JPEG XL", "jpeg-xl"),
    _row("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level", "video"),
    _row("1.2.840.10008.1.2.4.102", "MPEG-4 AVC/H.264 High Profile", "video"),
    _row("1.2.840.10008.1.2.4.107", "HEVC/H.265 Main Profile", "video"),
)
BY_UID: dict[str, TransferSyntax] = {row.uid: row for row in SYNTAXES}
NATIVE_SYNTAXES: tuple[str, ...] = tuple(row.uid for row in SYNTAXES if row.family == "native")


def syntax_name(uid: str) -> str:
    """A transfer syntax's name, or "unknown" when neither we nor pydicom know it."""
    row = BY_UID.get(str(uid))
    if row is not None:
        return row.name
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != str(uid) else "unknown"


def supported_syntax_names() -> list[str]:
    """Names of the transfer syntaxes the installed codecs can decode, as pydicom sees them."""
    from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS

    return [uid.name for uid, (decoder, _) in _PIXEL_DATA_DECODERS.items() if decoder.is_available]


def _spec(module: str) -> Any:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _installed(module: str) -> bool:
    return _spec(module) is not None


@cache
def decodable_syntaxes() -> tuple[dict[str, str], ...]:
    """Transfer syntaxes the installed codecs can decode, found without importing them."""
    return syntaxes_decodable_with(_installed)


def syntaxes_decodable_with(installed: Callable[[str], bool]) -> tuple[dict[str, str], ...]:
    """The rows whose decoders are complete, given which modules are `installed`."""
    if not (installed("pydicom") and installed("numpy")):
        return ()
    return tuple(
        {"uid": row.uid, "name": row.name}
        for row in SYNTAXES
        if any(all(installed(m) for m in modules) for modules in row.decoders)
    )


@cache
def codec_versions() -> dict[str, str]:
    """Installed versions of the decoding packages.

    Read from the ``NAME-VERSION.dist-info`` folder names beside each package:
    importing ``importlib.metadata`` would add ~15 ms to a cold /health.
    """
    versions: dict[str, str] = {}
    for module, distribution in CODEC_DISTRIBUTIONS.items():
        spec = _spec(module)
        if spec is None or not spec.origin:
            continue
        folder = os.path.dirname(spec.origin)
        if spec.submodule_search_locations is not None:  # a package: its parent folder
            folder = os.path.dirname(folder)
        versions[distribution] = _dist_info_versions(folder).get(
            _normalise(distribution), "unknown"
        )
    return versions


def _normalise(project: str) -> str:
    return re.sub(r"[-_.]+", "_", project).lower()


@cache
def _dist_info_versions(folder: str) -> dict[str, str]:
    found: dict[str, str] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        if name.endswith(".dist-info"):
            project, _, version = name.removesuffix(".dist-info").partition("-")
            found[_normalise(project)] = version
    return found
