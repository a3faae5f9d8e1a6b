"""The transfer-syntax table: names, decodable syntaxes and codec versions."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy
import pydicom
import pytest

import dicom_codecs
from tests.corpus import PROJECT

PLUGIN_MODULES = ("pylibjpeg", "libjpeg", "openjpeg", "rle", "PIL", "gdcm", "jpeg_ls")

# What pydicom 3's decoders need, per plugin (pydicom.pixels.decoders), written
# out independently of the table: (modules, syntaxes they decode).
_JPEG_8_12 = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
_JPEG = (*_JPEG_8_12, "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_J2K = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
_HTJ2K = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
_NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99")
_RLE = ("1.2.840.10008.1.2.5",)
PLUGINS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    ((), (*_NATIVE, "1.2.840.10008.1.2.2", *_RLE)),
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
        "print(sorted(m for m in ('numpy', 'pydicom', 'PIL') if m in sys.modules))"
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


def test_decodable_syntaxes_agree_with_pydicom() -> None:
    names = [row["name"] for row in dicom_codecs.decodable_syntaxes()]
    assert set(names) == set(dicom_codecs.supported_syntax_names())
    assert names[0] == "Implicit VR Little Endian"


def test_table_names_agree_with_pydicom_where_it_has_them() -> None:
    from pydicom.uid import UID

    for row in dicom_codecs.SYNTAXES:
        if row.decoders:
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
