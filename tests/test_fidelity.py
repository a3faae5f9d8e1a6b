"""Pixel comparisons against independent reference renderings (dcmtk, GDCM, ...).

Every file is rendered with the default options to PNG (lossless, so only the
rendering is compared) and checked per pixel against its reference:

- grayscale and lossless colour: mean |diff| <= 1.0 and 99th percentile <= 3;
- colour from lossy codecs (JPEG decoders differ in chroma up-sampling): p99 <= 8.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dicom_converter
from tests.corpus import REFERENCES, bundled_file, corpus_dir, require_corpus

LOSSY_COLOUR_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}


def _manifest(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _differences(rendered: bytes, reference: Path) -> np.ndarray:
    ours = np.asarray(Image.open(io.BytesIO(rendered)))
    theirs = np.asarray(Image.open(reference))
    if theirs.ndim == 3 and theirs.shape[2] == 4:
        theirs = theirs[..., :3]
    assert ours.shape == theirs.shape, f"shape {ours.shape} != reference {theirs.shape}"
    return np.abs(ours.astype(np.int16) - theirs.astype(np.int16))


def _assert_close(path: Path, reference: Path) -> None:
    result = dicom_converter.render(path, dicom_converter.RenderOptions(output_format="png"))
    diff = _differences(result.image, reference)
    mean, p99 = float(diff.mean()), float(np.percentile(diff, 99))
    colour = diff.ndim == 3
    if colour and result.transfer_syntax in LOSSY_COLOUR_SYNTAXES:
        assert p99 <= 8, f"{path.name}: p99 {p99} > 8 (lossy colour)"
    else:
        assert mean <= 1.0, f"{path.name}: mean |diff| {mean:.3f} > 1.0"
        assert p99 <= 3, f"{path.name}: p99 |diff| {p99} > 3"


BUNDLED = _manifest(REFERENCES / "MANIFEST.tsv")


@pytest.mark.parametrize("row", BUNDLED, ids=[row["file"] for row in BUNDLED])
def test_bundled_file_matches_dcmtk(row: dict[str, str]) -> None:
    _assert_close(bundled_file(row["file"]), REFERENCES / row["reference"])


def _corpus_rows() -> list[dict[str, str]]:
    manifest = corpus_dir() / "MANIFEST.tsv"
    if not manifest.exists():
        return [{"file": "corpus-missing", "ref_file": ""}]
    return [row for row in _manifest(manifest) if row.get("ref_file")]


CORPUS = _corpus_rows()


@pytest.mark.parametrize("row", CORPUS, ids=[row["file"] for row in CORPUS])
def test_corpus_file_matches_reference(row: dict[str, str]) -> None:
    folder = require_corpus()
    # will-jxl.dcm (JPEG XL) too: libjxl decodes it, and its reference is djxl's.
    _assert_close(folder / row["file"], folder / row["ref_file"])


def test_corpus_covers_every_reference() -> None:
    folder = require_corpus()
    references = {p.name for p in folder.glob("*.png") if p.name != "FellowOakSquareTransp.png"}
    assert references == {row["ref_file"] for row in CORPUS}
