"""The DICOMweb and WADO-URI vocabularies: the same image as the native fields.

Each dialect's request goes through ``lambda_function.handle`` as an API Gateway GET
(a query string), fetching from a real loopback HTTP server. JPEG answers must be
equal byte for byte, PNG answers pixel for pixel. Two names for one thing are a 400
that names both; unknown names are still refused.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from convert_api import ConvertRequest
from dicom_converter import FrameRange, Region, Window
from errors import InvalidRequest
from settings import Settings
from tests import servers
from tests.dicom_files import image_dataset
from tests.handler_support import Answer, invoke, load_event, with_url

MakeSettings = Callable[..., Settings]


@pytest.fixture
def cine_url(http_server: servers.HttpServer, tmp_path: Path) -> str:
    """Three 64x48 frames, each a different gradient."""
    frames = np.stack(
        [(np.arange(64 * 48).reshape(48, 64) * (k + 1)) % 4096 for k in range(3)]
    ).astype(np.uint16)
    ds = image_dataset(frames[0], NumberOfFrames=3, BitsStored=12, HighBit=11)
    ds.PixelData = frames.tobytes()
    path = tmp_path / "cine.dcm"
    ds.save_as(path, enforce_file_format=True)
    return http_server.put("cine.dcm", path)


def get(url: str, settings: Settings, accept: str | None = None, **query: Any) -> Answer:
    # The fixture's own quality and width are left out: each test says what it asks.
    event = with_url(
        load_event("rest_convert_get"), url, **{"quality": None, "width": None, **query}
    )
    if accept is not None:
        event["headers"]["Accept"] = accept
        event["multiValueHeaders"]["Accept"] = [accept]
    return invoke(event, settings)


def image(answer: Answer) -> bytes:
    assert answer.status == 200, answer.body[:300]
    assert answer.media_type.startswith("image/")
    return answer.body


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# --------------------------------------------------------------------------- equivalence

# (native, DICOMweb, WADO-URI) forms of one request.
EQUIVALENT_JPEG = [
    (
        {"window_center": 40, "window_width": 400},
        {"window": "40,400"},
        {"windowCenter": 40, "windowWidth": 400},
    ),
    ({"width": 64, "height": 40}, {"viewport": "64,40"}, {"columns": 64, "rows": 40}),
    ({"quality": 55}, {"quality": 55}, {"imageQuality": 55}),
    (
        {"window": '{"center": 0, "width": 300, "function": "SIGMOID"}'},
        {"window": "0,300,sigmoid"},
        None,
    ),
    (
        {"window_center": 10, "window_width": 80, "window_function": "LINEAR_EXACT"},
        {"window": "10,80,linear-exact"},
        None,
    ),
]


@pytest.mark.parametrize(("native", "dicomweb", "wado"), EQUIVALENT_JPEG)
def test_the_three_dialects_give_the_same_jpeg_byte_for_byte(
    native: dict[str, Any],
    dicomweb: dict[str, Any],
    wado: dict[str, Any] | None,
    sample_url: str,
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    if "window" in native:  # the object form travels as JSON in a POST body only
        native = {"window_center": 0, "window_width": 300, "window_function": "SIGMOID"}
    reference = image(get(sample_url, settings, response="binary", output_format="jpg", **native))
    assert image(get(sample_url, settings, response="binary", **dicomweb)) == reference
    if wado is not None:
        answer = get(sample_url, settings, requestType="WADO", contentType="image/jpeg", **wado)
        assert image(answer) == reference


def test_png_is_the_same_pixel_for_pixel(sample_url: str, make_settings: MakeSettings) -> None:
    settings = make_settings()
    native = get(
        sample_url,
        settings,
        response="binary",
        output_format="png",
        window_center=40,
        window_width=400,
        width=100,
        height=100,
    )
    dicomweb = get(sample_url, settings, accept="image/png", window="40,400", viewport="100,100")
    wado = get(
        sample_url,
        settings,
        requestType="WADO",
        contentType="image/png",
        windowCenter=40,
        windowWidth=400,
        columns=100,
        rows=100,
        studyUID="1.2.3",
        seriesUID="1.2.3.4",
        objectUID="1.2.3.4.5",
    )
    reference = pixels(image(native))
    assert reference.shape == (100, 100)
    assert np.array_equal(pixels(image(dicomweb)), reference)
    assert np.array_equal(pixels(image(wado)), reference)


def test_frame_number_is_frame(cine_url: str, make_settings: MakeSettings) -> None:
    settings = make_settings()
    native = image(get(cine_url, settings, response="binary", output_format="png", frame=2))
    wado = image(
        get(cine_url, settings, requestType="WADO", contentType="image/png", frameNumber=2)
    )
    assert np.array_equal(pixels(native), pixels(wado))
    first = image(get(cine_url, settings, response="binary", output_format="png", frame=1))
    assert not np.array_equal(pixels(native), pixels(first))


def test_regions_crop_the_same_pixels(sample_url: str, make_settings: MakeSettings) -> None:
    """CT_small is 128x128: crop 32,16,64,64 (pixels) is region 0.25,0.125,0.75,0.625."""
    settings = make_settings()
    common = {"window_center": 40, "window_width": 400}
    native = get(
        sample_url,
        settings,
        response="binary",
        output_format="png",
        crop="32,16,64,64",
        width=64,
        height=64,
        **common,
    )
    dicomweb = get(
        sample_url, settings, accept="image/png", window="40,400", viewport="64,64,32,16,64,64"
    )
    wado = get(
        sample_url,
        settings,
        requestType="WADO",
        contentType="image/png",
        windowCenter=40,
        windowWidth=400,
        region="0.25,0.125,0.75,0.625",
        columns=64,
        rows=64,
    )
    reference = pixels(image(native))
    assert reference.shape == (64, 64)
    assert np.array_equal(pixels(image(dicomweb)), reference)
    assert np.array_equal(pixels(image(wado)), reference)


def test_a_negative_viewport_width_flips(sample_url: str, make_settings: MakeSettings) -> None:
    settings = make_settings()
    plain = pixels(
        image(get(sample_url, settings, accept="image/png", viewport="128,128,0,0,128,128"))
    )
    flipped = pixels(
        image(get(sample_url, settings, accept="image/png", viewport="128,128,0,0,-128,128"))
    )
    assert np.array_equal(flipped, plain[:, ::-1])


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"window": "40,400", "windowCenter": 40, "windowWidth": 400}, ("window", "windowCenter")),
        (
            {"window_center": 40, "window_width": 400, "windowWidth": 9},
            ("window_center", "windowWidth"),
        ),
        ({"output_format": "png", "contentType": "image/png"}, ("output_format", "contentType")),
        ({"quality": 50, "imageQuality": 50}, ("quality", "imageQuality")),
        ({"frame": 1, "frameNumber": 1}, ("frame", "frameNumber")),
        ({"frame": 1, "frames": "all"}, ("frame", "frames")),
        ({"width": 10, "columns": 10}, ("width", "columns")),
        ({"height": 10, "viewport": "10,10"}, ("height", "viewport")),
        ({"crop": "0,0,4,4", "region": "0,0,1,1"}, ("crop", "region")),
        ({"crop": "0,0,4,4", "viewport": "4,4,0,0,4,4"}, ("viewport", "crop")),
    ],
)
def test_two_names_for_one_thing_are_a_400_naming_both(
    fields: dict[str, Any], names: tuple[str, str], sample_url: str, make_settings: MakeSettings
) -> None:
    answer = get(sample_url, make_settings(), **fields)
    assert answer.status == 400
    assert answer.document is not None
    message = answer.document["message"]
    assert all(name in message for name in names), message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"requestType": "WADO-RS"}, "requestType must be WADO"),
        ({"contentType": "application/dicom"}, "application/dicom"),
        ({"contentType": "text/html"}, "image/jpeg"),
        ({"viewport": "10"}, "viewport must be vw,vh"),
        ({"viewport": "0,10"}, "viewport width and height must be integers from 1 to 16384"),
        ({"viewport": "10,10,1,2,3"}, "viewport must be vw,vh"),
        ({"window": "40,400,cubic"}, "window must be center,width"),
        ({"window": "40,abc"}, "window must be center,width"),
        ({"windowCenter": 40}, "windowCenter and windowWidth must be given together"),
        ({"region": "0,0,2,1"}, "fractions"),
        ({"region": "0.5,0,0.25,1"}, "xmax must exceed xmin"),
        ({"crop": "1,2,3"}, "crop must be"),
        ({"frames": "2-1"}, "M >= N"),
        ({"frames": "some"}, "frames must be 'all', N or N-M"),
        ({"frameNumber": 0}, "frame is 1-based"),
        ({"anonymize": "yes"}, "unknown field(s) 'anonymize'"),
    ],
)
def test_bad_dialect_values_are_400_naming_the_field(
    fields: dict[str, Any], expected: str, sample_url: str, make_settings: MakeSettings
) -> None:
    answer = get(sample_url, make_settings(), **fields)
    assert answer.status == 400, answer.body[:300]
    assert answer.document is not None and answer.document["error"]["code"] == "invalid_request"
    assert expected in answer.document["message"]


# --------------------------------------------------------------------------- parsing


def parse(settings: Settings | None = None, **fields: Any) -> ConvertRequest:
    return ConvertRequest.from_fields(
        {"url": "https://example.com/a.dcm", **fields}, settings or Settings()
    )


def test_parsed_options_of_each_dialect() -> None:
    assert parse(frames="all").options.frames == FrameRange(1, None)
    assert parse(frames="2-5").options.frames == FrameRange(2, 5)
    assert parse(frames=3).options.frames == FrameRange(3, 3)
    assert parse(crop={"x": 1, "y": 2, "width": 30, "height": 40}).options.region == Region(
        1, 2, 30, 40, "pixels"
    )
    assert parse(crop="1,2,30,40").options.region == Region(1, 2, 30, 40, "pixels")
    viewport = parse(viewport="200,100,10,20,-50,60").options
    assert (viewport.width, viewport.height) == (200, 100)
    assert viewport.region == Region(10, 20, -50, 60, "pixels")
    region = parse(region="0.1,0.2,0.5,1").options.region
    assert region is not None and region.units == "fraction"
    assert (region.x, region.y) == (0.1, 0.2)
    assert region.width == pytest.approx(0.4) and region.height == pytest.approx(0.8)
    assert parse(window="40,400,LINEAR_EXACT").options.window == Window(40, 400, "LINEAR_EXACT")
    assert parse(windowCenter="40", windowWidth="400").options.window == Window(40, 400)


def test_wado_content_type_asks_for_the_image_itself() -> None:
    request = parse(requestType="WADO", contentType="image/webp", studyUID="1", objectUID="2")
    assert (request.response, request.options.output_format) == ("binary", "webp")
    assert parse(contentType="image/gif").options.output_format == "gif"
    # A list: the first type served.
    assert parse(contentType="application/dicom, image/png").options.output_format == "png"
    with pytest.raises(InvalidRequest, match="application/dicom"):
        parse(contentType="application/dicom")


def test_accept_picks_the_image_format_when_no_field_does() -> None:
    settings = Settings()

    def chosen(accept: str | None, **fields: Any) -> tuple[str, str]:
        import delivery
        from lambda_function import prefers_image

        request = ConvertRequest.from_fields(
            {"url": "https://example.com/a.dcm", **fields},
            settings,
            prefers_image(accept),
            delivery.negotiated_format(accept, settings.default_output_format),
        )
        return request.response, request.options.output_format

    assert chosen("image/png") == ("binary", "png")
    assert chosen("image/webp,image/png;q=0.5") == ("binary", "webp")
    # A browser's <img>: every image type is as good, so the deployment's default.
    assert chosen("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8") == (
        "binary",
        "jpg",
    )
    assert chosen("application/json") == ("json", "jpg")
    assert chosen(None) == ("json", "jpg")
    # A field wins over Accept.
    assert chosen("image/png", output_format="webp") == ("binary", "webp")
    assert chosen("image/png", response="json") == ("json", "jpg")


# --------------------------------------------------------------------------- frames


def test_frames_through_the_handler(cine_url: str, make_settings: MakeSettings) -> None:
    settings = make_settings()
    animation = get(cine_url, settings, frames="all", output_format="gif", response="binary")
    assert image(animation)[:6] in (b"GIF87a", b"GIF89a")
    assert Image.open(io.BytesIO(animation.body)).n_frames == 3
    sheet = get(cine_url, settings, frames="1-2", output_format="png")
    assert sheet.status == 200 and sheet.document is not None
    data = sheet.document["data"]
    assert data["layout"] == "contact_sheet" and data["frame_range"] == [1, 2]
    assert data["window"]["center"] is not None
    # MAX_FRAMES caps a request, and the message says what to change.
    capped = get(cine_url, make_settings(max_frames=2), frames="all", output_format="gif")
    assert capped.status == 400 and capped.document is not None
    assert "MAX_FRAMES" in capped.document["message"]
