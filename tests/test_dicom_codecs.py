"""The transfer-syntax table: names, decodable syntaxes, serving codecs and codec versions."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy
import pydicom
import pytest

import dicom_codecs
from tests.corpus import PROJECT

IMAGECODECS = {
    "jpeg": "imagecodecs._jpeg8",
    "jpeg-ls": "imagecodecs._jpegls",
    "j2k": "imagecodecs._jpeg2k",
    "htj2k": "imagecodecs._htj2k",
    "jxl": "imagecodecs._jpegxl",
}
PLUGIN_MODULES = (
    *IMAGECODECS.values(),
    "pylibjpeg",
    "libjpeg",
    "openjpeg",
    "rle",
    "PIL",
    "gdcm",
    "jpeg_ls",
)

# What each decoder needs, written out independently of the table: imagecodecs'
# extension modules (called by frame_decoders) and pydicom 3's plugins
# (pydicom.pixels.decoders): (modules, syntaxes they decode).
_JPEG_8_12 = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
_JPEG = (*_JPEG_8_12, "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_J2K = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
_HTJ2K = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
_NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99")
_RLE = ("1.2.840.10008.1.2.5",)
_JXL = ("1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112")
PLUGINS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    ((), (*_NATIVE, "1.2.840.10008.1.2.2", *_RLE)),
    ((IMAGECODECS["jpeg"],), _JPEG),
    ((IMAGECODECS["jpeg-ls"],), _JPEG_LS),
    ((IMAGECODECS["j2k"],), _J2K),
    ((IMAGECODECS["htj2k"],), _HTJ2K),
    ((IMAGECODECS["jxl"],), _JXL),
    (("pylibjpeg", "libjpeg"), _JPEG + _JPEG_LS),
    (("pylibjpeg", "openjpeg"), _J2K + _HTJ2K),
    (("pylibjpeg", "rle"), _RLE),
    (("PIL",), _JPEG_8_12 + _J2K),
    (("gdcm",), _JPEG + _JPEG_LS + _J2K),
    (("jpeg_ls",), _JPEG_LS),
)


def test_importing_and_asking_imports_no_codec() -> None:
    code = (
        "import sys, dicom_codecs\n"
        "dicom_codecs.decodable_syntaxes(); dicom_codecs.codec_versions()\n"
        "dicom_codecs.syntax_name('1.2.840.10008.1.2.4.112')\n"
        "print(sorted(m for m in ('numpy', 'pydicom', 'PIL', 'imagecodecs') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("count", range(len(PLUGIN_MODULES) + 1))
def test_every_set_of_installed_plugins(count: int) -> None:
    for present in itertools.combinations(PLUGIN_MODULES, count):
        installed = {"pydicom", "numpy", *present}
        expected: set[str] = set()
        for modules, syntaxes in PLUGINS:
            if set(modules) <= installed:
                expected.update(syntaxes)
        found = dicom_codecs.syntaxes_decodable_with(installed.__contains__)
        assert {row["uid"] for row in found} == expected, present


def test_nothing_decodes_without_pydicom_and_numpy() -> None:
    assert dicom_codecs.syntaxes_decodable_with({"numpy", *PLUGIN_MODULES}.__contains__) == ()
    assert dicom_codecs.syntaxes_decodable_with({"pydicom", *PLUGIN_MODULES}.__contains__) == ()


def test_each_syntax_names_the_codec_that_serves_it() -> None:
    everything = {"pydicom", "numpy", *PLUGIN_MODULES}.__contains__
    codecs = {row["uid"]: row["codec"] for row in dicom_codecs.syntaxes_decodable_with(everything)}
    assert {codecs[uid] for uid in _JPEG} == {"libjpeg-turbo"}
    assert {codecs[uid] for uid in _JPEG_LS} == {"CharLS"}
    assert {codecs[uid] for uid in _J2K} == {"OpenJPEG"}
    assert {codecs[uid] for uid in _HTJ2K} == {"OpenJPH"}
    assert {codecs[uid] for uid in _JXL} == {"libjxl"}
    assert codecs[_RLE[0]] == "pylibjpeg-rle"
    assert {codecs[uid] for uid in _NATIVE} == {"pydicom"}
    # Without imagecodecs (Python < 3.11), pydicom's pylibjpeg plugins serve.
    older = {"pydicom", "numpy", "pylibjpeg", "libjpeg", "openjpeg"}.__contains__
    codecs = {row["uid"]: row["codec"] for row in dicom_codecs.syntaxes_decodable_with(older)}
    assert codecs[_JPEG[0]] == codecs[_JPEG_LS[0]] == "libjpeg"
    assert codecs[_HTJ2K[0]] == "OpenJPEG" and codecs[_RLE[0]] == "pydicom"


def test_decodable_syntaxes_are_what_is_installed() -> None:
    rows = dicom_codecs.decodable_syntaxes()
    assert rows[0] == {
        "uid": "1.2.840.10008.1.2",
        "name": "Implicit VR Little Endian",
        "codec": "pydicom",
    }
    assert [row["name"] for row in rows] == dicom_codecs.supported_syntax_names()
    # imagecodecs is a requirement from Python 3.11: every syntax with a decoder.
    if sys.version_info >= (3, 11):
        assert {row["uid"] for row in rows} == {
            row.uid for row in dicom_codecs.SYNTAXES if row.decoders
        }


def test_submodules_are_found_without_importing_their_package() -> None:
    assert dicom_codecs.is_installed("imagecodecs._jpeg8") == (sys.version_info >= (3, 11))
    assert not dicom_codecs.is_installed("imagecodecs._no_such_codec")
    assert not dicom_codecs.is_installed("no_such_package._jpeg8")


def test_table_names_agree_with_pydicom_where_it_has_them() -> None:
    from pydicom.uid import UID

    for row in dicom_codecs.SYNTAXES:
        if row.decoders and row.family != "jpeg-xl":  # pydicom 3.0 knows no JPEG XL
            assert UID(row.uid).name == row.name
            assert UID(row.uid).is_transfer_syntax


def test_syntax_names() -> None:
    assert dicom_codecs.syntax_name("1.2.840.10008.1.2.4.112") == "JPEG XL"
    assert (
        dicom_codecs.syntax_name("1.2.840.10008.1.2.4.107") == "HEVC/H.265 Main Profile"
    )  # shorter than pydicom's
    assert dicom_codecs.syntax_name("1.2.840.10008.1.2.4.92").startswith("JPEG 2000 Part 2")
    assert dicom_codecs.syntax_name("1.2.3.4") == "unknown"


def test_native_syntaxes() -> None:
    assert set(dicom_codecs.NATIVE_SYNTAXES) == {*_NATIVE, "1.2.840.10008.1.2.2"}


def test_codec_versions_are_the_installed_ones() -> None:
    versions = dicom_codecs.codec_versions()
    assert versions["pydicom"] == pydicom.__version__
    assert versions["numpy"] == numpy.__version__
    order = list(dicom_codecs.CODEC_DISTRIBUTIONS.values())
    assert list(versions) == [name for name in order if name in versions]
