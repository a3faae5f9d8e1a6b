"""Files that once crashed the renderer, or ran away with its memory, now get typed errors.

The files in tests/regressions/ were made by make_regressions.py beside them:
fuzzing finds, each a single mutation of one of pydicom's bundled files, and
8 x 8 images with one fault in a lookup table.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from dicom_converter import RenderOptions, render
from errors import CorruptDicom, ServiceError, UnsupportedImage
from tests.corpus import PROJECT

REGRESSIONS = PROJECT / "tests" / "regressions"

# The error each file must get; None: it must render.
EXPECTED: dict[str, type[ServiceError] | None] = {
    "deflated_truncated.dcm": CorruptDicom,
    "rle_segment_panic.dcm": CorruptDicom,
    "jpeg_rows_mismatch.dcm": CorruptDicom,
    "patient_name_bad_vr.dcm": CorruptDicom,
    "charset_huge_length.dcm": CorruptDicom,
    "multivalued_transfer_syntax.dcm": CorruptDicom,
    "no_photometric_interpretation.dcm": CorruptDicom,
    "offset_table_past_end.dcm": CorruptDicom,
    "segmented_lut_bomb.dcm": CorruptDicom,
    "palette_descriptor_one_value.dcm": CorruptDicom,
    "palette_descriptor_24_bits.dcm": CorruptDicom,
    "modality_lut_descriptor_one_value.dcm": CorruptDicom,
    "lut_data_not_numbers.dcm": CorruptDicom,
    "palette_32_bit.dcm": UnsupportedImage,
    "palette_alpha.dcm": None,
    "rescale_slope_overflow.dcm": CorruptDicom,
}
REFUSED = sorted(name for name, error in EXPECTED.items() if error is not None)

# Address space of the child that renders every file: the interpreter and its
# libraries take under 300 MiB; a file that tries to expand a LUT or a frame
# past the cap fails with MemoryError instead of taking the machine down.
ADDRESS_SPACE_CAP = 768 * 1024 * 1024
SECONDS_PER_FILE = 2.0


def test_every_regression_file_is_listed() -> None:
    assert {p.name for p in REGRESSIONS.glob("*.dcm")} == set(EXPECTED)


@pytest.mark.parametrize("name", REFUSED)
@pytest.mark.parametrize("output_format", ["jpg", "png"])
def test_regression_file(name: str, output_format: str) -> None:
    error = EXPECTED[name]
    assert error is not None
    with pytest.raises(error) as caught:
        render(REGRESSIONS / name, RenderOptions(output_format=output_format))
    assert caught.value.status == error.status


def test_rescale_overflow_names_the_attribute() -> None:
    with pytest.raises(CorruptDicom, match="RescaleSlope"):
        render(REGRESSIONS / "rescale_slope_overflow.dcm")


def test_an_alpha_palette_is_ignored() -> None:
    # The alpha table is the reverse ramp; the RGB tables are the identity.
    result = render(REGRESSIONS / "palette_alpha.dcm", RenderOptions(output_format="png"))
    rgb = np.asarray(Image.open(io.BytesIO(result.image)))
    assert rgb.shape == (8, 8, 3)
    stored = np.arange(0, 256, 4).reshape(8, 8)
    assert np.array_equal(rgb, np.repeat(stored[..., None], 3, axis=2))


CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
    sys.path.insert(0, {project!r})
    from dicom_converter import render
    from errors import ServiceError
    out = {{}}
    for path in sys.argv[1:]:
        start = time.perf_counter()
        try:
            render(path)
            status = 200
        except ServiceError as exc:
            status = exc.status
        except MemoryError:
            status = "MemoryError"
        out[path] = [status, time.perf_counter() - start]
    print(json.dumps(out))
    """
)


def test_every_file_is_answered_in_bounded_time_and_memory() -> None:
    script = CHILD.format(cap=ADDRESS_SPACE_CAP, project=str(PROJECT))
    paths = [str(REGRESSIONS / name) for name in sorted(EXPECTED)]
    done = subprocess.run(
        [sys.executable, "-c", script, *paths],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    for name, error in EXPECTED.items():
        status, seconds = results[str(REGRESSIONS / name)]
        assert status == (200 if error is None else error.status), name
        assert seconds < SECONDS_PER_FILE, f"{name} took {seconds:.1f} s"
