"""The one transfer-syntax table: each UID's name, family and the codecs that decode it.

This module stays light (no numpy, pydicom, Pillow or imagecodecs at import
time) because GET /health reports the decodable syntaxes, the codec serving
each, and codec versions from a cold start: what is installed is found from
import specs, extension files and ``.dist-info`` folder names, never by
importing a codec.

Each syntax lists its codecs in order of preference, each with the modules it
needs; the first complete one serves it. The fastest maintained decoders come
first: the ones imagecodecs bundles (libjpeg-turbo, CharLS, OpenJPEG, OpenJPH,
libjxl; abi3 wheels for Python >= 3.11), which ``frame_decoders`` calls
directly. Behind them, pydicom's own decoder plugins (pylibjpeg, Pillow, GDCM,
pyjpegls), which ``frame_decoders`` reaches through ``pydicom.pixels``. Every
decoder also needs pydicom and numpy.
"""

from __future__ import annotations

import importlib.machinery
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


@dataclass(frozen=True)
class Codec:
    """A decoder, by the name /health shows, and the modules it needs."""

    name: str
    modules: tuple[str, ...]


# The imagecodecs extension module behind each codestream family.
IMAGECODECS_EXTENSIONS: dict[str, str] = {
    "jpeg": "imagecodecs._jpeg8",
    "jpeg-ls": "imagecodecs._jpegls",
    "jpeg2000": "imagecodecs._jpeg2k",
    "htj2k": "imagecodecs._htj2k",
    "jpeg-xl": "imagecodecs._jpegxl",
}
_PYDICOM = Codec("pydicom", ())
_TURBO = Codec("libjpeg-turbo", (IMAGECODECS_EXTENSIONS["jpeg"],))
_CHARLS = Codec("CharLS", (IMAGECODECS_EXTENSIONS["jpeg-ls"],))
_OPENJPEG = Codec("OpenJPEG", (IMAGECODECS_EXTENSIONS["jpeg2000"],))
_OPENJPH = Codec("OpenJPH", (IMAGECODECS_EXTENSIONS["htj2k"],))
_LIBJXL = Codec("libjxl", (IMAGECODECS_EXTENSIONS["jpeg-xl"],))
# pydicom's decoder plugins (pydicom.pixels.decoders), as the modules it imports for them.
_LIBJPEG = Codec("libjpeg", ("pylibjpeg", "libjpeg"))
_PYLIBJPEG_OPENJPEG = Codec("OpenJPEG", ("pylibjpeg", "openjpeg"))
_PYLIBJPEG_RLE = Codec("pylibjpeg-rle", ("pylibjpeg", "rle"))
_PILLOW = Codec("Pillow", ("PIL",))
_GDCM = Codec("GDCM", ("gdcm",))
_PYJPEGLS = Codec("CharLS", ("jpeg_ls",))

# Module → the distribution that installs it, in the order /health lists them.
CODEC_DISTRIBUTIONS: dict[str, str] = {
    "pydicom": "pydicom",
    "numpy": "numpy",
    "imagecodecs": "imagecodecs",
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
    decoders: tuple[Codec, ...]  # in order of preference; the first complete one serves


def _row(uid: str, name: str, family: str, *decoders: Codec) -> TransferSyntax:
    return TransferSyntax(uid, name, family, decoders)


_JPEG_8_12 = (_TURBO, _LIBJPEG, _PILLOW, _GDCM)
_JPEG_LOSSLESS = (_TURBO, _LIBJPEG, _GDCM)
_JPEG_LS = (_CHARLS, _LIBJPEG, _GDCM, _PYJPEGLS)
_J2K = (_OPENJPEG, _PYLIBJPEG_OPENJPEG, _PILLOW, _GDCM)
_HTJ2K = (_OPENJPH, _PYLIBJPEG_OPENJPEG)
# pylibjpeg-rle decodes a large RLE frame about 5x faster than pydicom's own decoder.
_RLE = (_PYLIBJPEG_RLE, _PYDICOM)
_JPEG_XL = (_LIBJXL,)

# The order is the order /health lists decodable syntaxes in.
SYNTAXES: tuple[TransferSyntax, ...] = (
    _row(IMPLICIT_LE, "Implicit VR Little Endian", "native", _PYDICOM),
    _row(EXPLICIT_LE, "Explicit VR Little Endian", "native", _PYDICOM),
    _row(DEFLATED, "Deflated Explicit VR Little Endian", "native", _PYDICOM),
    _row(EXPLICIT_BE, "Explicit VR Big Endian", "native", _PYDICOM),
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
        *_HTJ2K,
    ),
    _row(
        "1.2.840.10008.1.2.4.202",
        "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)",
        "htj2k",
        *_HTJ2K,
    ),
    _row(
        "1.2.840.10008.1.2.4.203",
        "High-Throughput JPEG 2000 Image Compression",
        "htj2k",
        *_HTJ2K,
    ),
    _row("1.2.840.10008.1.2.5", "RLE Lossless", "rle", *_RLE),
    # pydicom 3.0 has no JPEG XL decoder and may not know these UIDs (or names them longer).
    _row("1.2.840.10008.1.2.4.110", "JPEG XL Lossless", "jpeg-xl", *_JPEG_XL),
    _row("1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression", "jpeg-xl", *_JPEG_XL),
    _row("1.2.840.10008.1.2.4.112", "JPEG XL", "jpeg-xl", *_JPEG_XL),
    # No decoder here; named so that an "unsupported" error can say what the file is.
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
    """Names of the transfer syntaxes the installed codecs can decode."""
    return [row["name"] for row in decodable_syntaxes()]


def _spec(module: str) -> Any:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


@cache
def is_installed(module: str) -> bool:
    """Whether `module` (a package, or a package's submodule) is installed, not importing it."""
    package, _, child = module.rpartition(".")
    if not package:
        return _spec(module) is not None
    # find_spec("pkg.mod") would import pkg (imagecodecs imports numpy): look
    # for the submodule's file in the package's folders instead.
    spec = _spec(package)
    folders = getattr(spec, "submodule_search_locations", None) or ()
    suffixes = importlib.machinery.all_suffixes()
    return any(
        os.path.isfile(os.path.join(folder, child + suffix))
        for folder in folders
        for suffix in suffixes
    )


def serving_codec(uid: str, installed: Callable[[str], bool] | None = None) -> Codec | None:
    """The codec that decodes `uid` with what is installed, or None."""
    installed = installed or is_installed
    row = BY_UID.get(str(uid))
    if row is None or not (installed("pydicom") and installed("numpy")):
        return None
    return next((c for c in row.decoders if all(installed(m) for m in c.modules)), None)


@cache
def decodable_syntaxes() -> tuple[dict[str, str], ...]:
    """Transfer syntaxes the installed codecs can decode, found without importing them."""
    return syntaxes_decodable_with(is_installed)


def syntaxes_decodable_with(installed: Callable[[str], bool]) -> tuple[dict[str, str], ...]:
    """The rows with a complete codec, given which modules are `installed`, and that codec."""
    found = []
    for row in SYNTAXES:
        codec = serving_codec(row.uid, installed)
        if codec is not None:
            found.append({"uid": row.uid, "name": row.name, "codec": codec.name})
    return tuple(found)


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
