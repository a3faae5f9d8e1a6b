"""Where the test DICOM files are.

Two sources:
- pydicom's own test files, shipped inside its wheel: always present, so the
  suite stands on a clone of this project alone;
- the shared corpus (``../shared/dicom-corpus`` beside the project, or
  ``DICOM_CORPUS_DIR``): real files from other toolkits with dcmtk references.
  Tests that need it skip when it is absent, unless ``DICOM_CORPUS_REQUIRED=1``
  (CI sets it), which turns a missing corpus into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

PROJECT = Path(__file__).resolve().parents[1]
REFERENCES = PROJECT / "tests" / "references"


def bundled_file(name: str) -> Path:
    """A DICOM file from pydicom's wheel (never downloaded)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"{name} is not among pydicom's bundled test files")
    return Path(path)


def corpus_dir() -> Path:
    configured = os.environ.get("DICOM_CORPUS_DIR")
    return Path(configured) if configured else PROJECT.parent / "shared" / "dicom-corpus"


def env_flag(name: str) -> bool:
    """Whether a switch like DICOM_CORPUS_REQUIRED or ADVERSARIAL_LONG is on."""
    return os.environ.get(name, "") not in ("", "0", "false")


def corpus_required() -> bool:
    return env_flag("DICOM_CORPUS_REQUIRED")


def require_corpus() -> Path:
    """The corpus folder; skip the test when it is absent (fail when required)."""
    folder = corpus_dir()
    if not (folder / "MANIFEST.tsv").exists():
        message = f"shared DICOM corpus not found at {folder}"
        if corpus_required():
            pytest.fail(f"{message} (DICOM_CORPUS_REQUIRED is set)")
        pytest.skip(message)
    return folder


def corpus_file(name: str) -> Path:
    return require_corpus() / name
