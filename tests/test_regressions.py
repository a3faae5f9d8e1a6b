"""Files that once crashed the renderer (found by fuzzing) now get typed errors.

The files in tests/regressions/ were made by make_regressions.py beside them,
each a single mutation of one of pydicom's bundled files.
"""

from __future__ import annotations

import pytest

from dicom_converter import RenderOptions, render
from errors import CorruptDicom, ServiceError
from tests.corpus import PROJECT

REGRESSIONS = PROJECT / "tests" / "regressions"

EXPECTED: dict[str, type[ServiceError]] = {
    "deflated_truncated.dcm": CorruptDicom,
    "rle_segment_panic.dcm": CorruptDicom,
    "jpeg_rows_mismatch.dcm": CorruptDicom,
    "patient_name_bad_vr.dcm": CorruptDicom,
    "charset_huge_length.dcm": CorruptDicom,
    "multivalued_transfer_syntax.dcm": CorruptDicom,
    "no_photometric_interpretation.dcm": CorruptDicom,
    "offset_table_past_end.dcm": CorruptDicom,
}


def test_every_regression_file_is_listed() -> None:
    assert {p.name for p in REGRESSIONS.glob("*.dcm")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("output_format", ["jpg", "png"])
def test_regression_file(name: str, output_format: str) -> None:
    with pytest.raises(EXPECTED[name]) as caught:
        render(REGRESSIONS / name, RenderOptions(output_format=output_format))
    assert caught.value.status == 422
