"""Ranged reads of one frame: only the bytes a frame needs, from HTTP, S3 and R2.

Multi-frame files of every layout (native; JPEG Lossless with a Basic Offset Table,
with none, with an Extended Offset Table) are built at test time from corpus pixels
and served by real loopback servers: a Range-capable HTTP server that counts the
bytes it sends, variants that ignore or answer Range wrongly, and moto (S3 and R2).
Each frame fetched in ranges must decode to the pixels of the same frame of a whole
download, within a transfer of about the frame plus the header.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dicom_dataset
import file_downloader as fd
import frame_fetch
from errors import BlockedByPolicy, TooLarge, UpstreamTimeout
from tests import servers
from tests.ranged_files import build, frame_length, frame_pixels, source_pixels
from tests.test_file_downloader import LOOPBACK, make_options
from url_policy import SourceEndpoints, UrlPolicy

MIB = 1024 * 1024
# Header, offset tables, item headers and read-ahead beyond the frame itself.
SLACK = 160 * 1024
# Frames per layout: large enough that a whole download is many times one frame.
FRAMES = {"native": 80, "bot": 300, "eot": 300, "none": 40}


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return source_pixels(512)


@pytest.fixture(scope="module")
def wide_pixels() -> np.ndarray:
    # Larger frames for the file without offset tables: its items are walked one by one.
    return source_pixels(1024)


@pytest.fixture(scope="module")
def files(
    tmp_path_factory: pytest.TempPathFactory, pixels: np.ndarray, wide_pixels: np.ndarray
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ranged-files")
    return {
        layout: build(folder, layout, count, wide_pixels if layout == "none" else pixels)
        for layout, count in FRAMES.items()
    }


@pytest.fixture
def serve(http_server: servers.HttpServer) -> Iterator[Any]:
    def install(path: Path, mode: str = "ranges", **kwargs: Any) -> tuple[str, servers.RangeFile]:
        route = servers.RangeFile(path, mode, **kwargs)
        return http_server.route(f"/{mode}/{path.name}", route), route

    yield install


def fetch(url: str, dest: Path, frames: Any = (1, 1), **overrides: Any) -> frame_fetch.Fetched:
    options = make_options(**overrides)
    return frame_fetch.fetch_frames(url, dest, options, LOOPBACK, frames=frames)


def decoded(path: Path, index: int) -> np.ndarray:
    ds = dicom_dataset.read_dataset(path, 1 << 30)
    module = dicom_dataset.image_pixel_module(ds, 1 << 30)
    return np.asarray(dicom_dataset.decode_frame(ds, index, module))


def layout_pixels(layout: str, pixels: np.ndarray, wide_pixels: np.ndarray) -> np.ndarray:
    return wide_pixels if layout == "none" else pixels


# --------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize("layout", ["native", "bot", "eot", "none"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_frame_is_read_in_ranges(
    layout: str,
    where: str,
    files: dict[str, Path],
    serve: Any,
    pixels: np.ndarray,
    wide_pixels: np.ndarray,
    tmp_path: Path,
) -> None:
    path, count = files[layout], FRAMES[layout]
    index = {"first": 0, "middle": count // 2 + 1, "last": count - 1}[where]
    url, route = serve(path)
    fetched = fetch(url, tmp_path, (index + 1, index + 1))
    assert fetched.ranged
    source = layout_pixels(layout, pixels, wide_pixels)
    assert np.array_equal(decoded(fetched.path, index), frame_pixels(source, index))
    assert np.array_equal(decoded(fetched.path, index), decoded(path, index))
    bound = frame_length(path, layout, index, source) + SLACK
    assert fetched.bytes_transferred == route.served <= bound
    assert path.stat().st_size > 5 * bound
    assert fetched.identity == fd.probe(url, make_options(), LOOPBACK)


@pytest.mark.parametrize("layout", ["native", "bot", "eot"])
def test_a_cap_below_the_file_but_above_the_frame(
    layout: str, files: dict[str, Path], serve: Any, tmp_path: Path
) -> None:
    path = files[layout]
    url, _ = serve(path)
    cap = 4 * MIB
    assert path.stat().st_size > 4 * cap
    fetched = fetch(url, tmp_path / "ranged", (5, 5), max_bytes=cap)
    assert fetched.ranged and fetched.bytes_transferred <= cap
    with pytest.raises(TooLarge) as caught:
        fetch(url, tmp_path / "whole", None, max_bytes=cap)
    assert "MAX_DOWNLOAD_BYTES" in caught.value.message and "Range" in caught.value.message


def test_a_span_of_frames(
    files: dict[str, Path], serve: Any, pixels: np.ndarray, tmp_path: Path
) -> None:
    path = files["bot"]
    url, route = serve(path)
    fetched = fetch(url, tmp_path, (10, 13))
    assert fetched.ranged
    for index in range(9, 13):
        assert np.array_equal(decoded(fetched.path, index), frame_pixels(pixels, index))
    bound = sum(frame_length(path, "bot", i, pixels) for i in range(9, 13)) + SLACK
    assert route.served <= bound


def test_a_render_of_the_sparse_file_equals_a_whole_download(
    files: dict[str, Path], serve: Any, tmp_path: Path
) -> None:
    import dicom_converter
    from render_options import RenderOptions

    url, _ = serve(files["eot"])
    ranged = fetch(url, tmp_path / "ranged", (7, 7))
    whole = fetch(url, tmp_path / "whole", None)
    assert ranged.ranged and not whole.ranged
    assert ranged.identity == whole.identity
    options = RenderOptions("png", frame=7)
    assert (
        dicom_converter.render(ranged.path, options).image
        == dicom_converter.render(whole.path, options).image
    )


# --------------------------------------------------------------------------- falling back


@pytest.mark.parametrize("mode", ["ignore", "full", "shifted", "ranges-after-first"])
def test_servers_that_do_not_honour_ranges_get_a_whole_download(
    mode: str, files: dict[str, Path], serve: Any, pixels: np.ndarray, tmp_path: Path
) -> None:
    path = files["bot"]
    url, _ = serve(path, mode)
    fetched = fetch(url, tmp_path, (50, 50))
    assert not fetched.ranged
    assert fetched.path.read_bytes() == path.read_bytes()
    assert np.array_equal(decoded(fetched.path, 49), frame_pixels(pixels, 49))
    assert fetched.bytes_transferred == path.stat().st_size


def test_a_server_that_ignores_range_is_read_once(
    files: dict[str, Path], serve: Any, http_server: servers.HttpServer, tmp_path: Path
) -> None:
    # Its whole answer to the first range is kept, not asked for a second time.
    path = files["bot"]
    url, route = serve(path, "ignore")
    before = http_server.hits(f"/ignore/{path.name}")
    fetched = fetch(url, tmp_path, (50, 50))
    assert not fetched.ranged and fetched.path.read_bytes() == path.read_bytes()
    assert http_server.hits(f"/ignore/{path.name}") - before == 1
    assert route.served == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == [fetched.path.name]


def test_no_validator_means_a_whole_download(
    files: dict[str, Path], serve: Any, tmp_path: Path
) -> None:
    url, _ = serve(files["native"], etag=None, last_modified=None)
    fetched = fetch(url, tmp_path, (2, 2))
    assert not fetched.ranged and fetched.identity.kind == "sha256"


def test_a_whole_download_still_obeys_the_cap(
    files: dict[str, Path], serve: Any, tmp_path: Path
) -> None:
    url, _ = serve(files["bot"], "ignore")
    with pytest.raises(TooLarge):
        fetch(url, tmp_path, (1, 1), max_bytes=4 * MIB)
    assert list(tmp_path.iterdir()) == []


def test_deflated_files_are_read_whole(serve: Any, pixels: np.ndarray, tmp_path: Path) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from tests.dicom_files import image_dataset

    ds = image_dataset(pixels[:64, :64].copy(), NumberOfFrames=1)
    ds.PixelData = pixels[:64, :64].tobytes()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    url, _ = serve(path)
    fetched = fetch(url, tmp_path / "out", (1, 1))
    assert not fetched.ranged and fetched.path.read_bytes() == path.read_bytes()


def test_every_encapsulated_syntax_is_located_not_only_jpeg(
    serve: Any, pixels: np.ndarray, tmp_path: Path
) -> None:
    # The fetch reads offset tables and item headers, never the codestream, so a
    # file labelled HTJ2K with RPCL options (1.2.840.10008.1.2.4.202) is ranged too.
    import pydicom
    from pydicom.encaps import get_frame

    path = build(tmp_path, "bot", 40, pixels[:256, :256].copy())
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.202"
    ds.save_as(path, enforce_file_format=True)
    url, route = serve(path)
    fetched = fetch(url, tmp_path / "out", (30, 30))
    assert fetched.ranged and route.served < path.stat().st_size / 5

    def frame_30(file: Path) -> bytes:
        return get_frame(pydicom.dcmread(file).PixelData, 29, number_of_frames=40)

    assert frame_30(fetched.path) == frame_30(path)


def test_too_many_items_to_walk_means_a_whole_download(
    serve: Any, pixels: np.ndarray, tmp_path: Path
) -> None:
    # No offset table and more fragments than the request budget can walk.
    path = build(tmp_path, "none", frame_fetch.MAX_REQUESTS + 20, pixels[:256, :256].copy())
    url, _ = serve(path)
    fetched = fetch(url, tmp_path / "out", (3, 3))
    assert not fetched.ranged


# --------------------------------------------------------------------------- S3 and R2


def test_s3_frame_in_ranges(
    moto_s3: servers.MotoServer, files: dict[str, Path], pixels: np.ndarray, tmp_path: Path
) -> None:
    moto_s3.put_object("ranged", "scans/bot.dcm", files["bot"])
    options = make_options(endpoints=SourceEndpoints(s3=moto_s3.endpoint_url), max_bytes=4 * MIB)
    url = "s3://ranged/scans/bot.dcm"
    fetched = frame_fetch.fetch_frames(url, tmp_path, options, UrlPolicy(), frames=(120, 120))
    assert fetched.ranged
    assert np.array_equal(decoded(fetched.path, 119), frame_pixels(pixels, 119))
    assert fetched.bytes_transferred <= frame_length(files["bot"], "bot", 119, pixels) + SLACK
    assert fetched.identity == fd.probe(url, options, UrlPolicy())


def test_r2_frame_in_ranges(
    moto_r2: servers.MotoServer, files: dict[str, Path], pixels: np.ndarray, tmp_path: Path
) -> None:
    moto_r2.put_object("ranged", "native.dcm", files["native"])
    options = make_options(
        endpoints=SourceEndpoints(r2=moto_r2.endpoint_url),
        r2_access_key_id=moto_r2.access_key_id,
        r2_secret_access_key=moto_r2.secret_access_key,
        max_bytes=4 * MIB,
    )
    url = "r2://ranged/native.dcm"
    fetched = frame_fetch.fetch_frames(url, tmp_path, options, UrlPolicy(), frames=(33, 33))
    assert fetched.ranged
    assert np.array_equal(decoded(fetched.path, 32), frame_pixels(pixels, 32))
    assert fetched.bytes_transferred <= pixels.nbytes + SLACK


def test_ranges_follow_checked_redirects(
    files: dict[str, Path], http_server: servers.HttpServer, tmp_path: Path
) -> None:
    route = servers.RangeFile(files["eot"])
    http_server.route("/stored/eot.dcm", route)
    url = http_server.route("/moved/eot.dcm", servers.redirect("/stored/eot.dcm"))
    fetched = fetch(url, tmp_path, (2, 2))
    assert fetched.ranged and route.served == fetched.bytes_transferred
    assert http_server.hits("/moved/eot.dcm") == 1


class _ChangingFile(servers.RangeFile):
    """A file replaced after the first request: later ranges carry a stale If-Range."""

    def __call__(self, handler: Any) -> None:
        super().__call__(handler)
        self.etag = '"v2"'


def test_a_file_that_changes_between_requests_is_read_whole(
    files: dict[str, Path], http_server: servers.HttpServer, pixels: np.ndarray, tmp_path: Path
) -> None:
    url = http_server.route("/changing/bot.dcm", _ChangingFile(files["bot"]))
    fetched = fetch(url, tmp_path, (40, 40))
    assert not fetched.ranged
    assert fetched.identity == fd.SourceIdentity("http-etag", '"v2"', files["bot"].stat().st_size)
    assert np.array_equal(decoded(fetched.path, 39), frame_pixels(pixels, 39))


@pytest.mark.parametrize("layout", ["bot", "native"])
def test_ftp_frame_in_ranges(
    layout: str,
    ftp_server: servers.FtpServer,
    files: dict[str, Path],
    pixels: np.ndarray,
    tmp_path: Path,
) -> None:
    path = files[layout]
    url = ftp_server.put(f"ranged/{path.name}", path)
    index = FRAMES[layout] // 2
    fetched = fetch(url, tmp_path / "out", (index + 1, index + 1), max_bytes=4 * MIB)
    assert fetched.ranged and fetched.identity == fd.probe(url, make_options(), LOOPBACK)
    assert np.array_equal(decoded(fetched.path, index), frame_pixels(pixels, index))
    assert fetched.bytes_transferred <= frame_length(path, layout, index, pixels) + SLACK
    assert ftp_server.password not in fetched.identity.token()


def _native_with(tmp_path: Path, pixels: np.ndarray, syntax: str, sequences: bool) -> Path:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from tests.dicom_files import image_dataset

    small = pixels[:128, :128].copy()
    ds = image_dataset(small, NumberOfFrames=12)
    ds.PixelData = b"".join(frame_pixels(small, k).tobytes() for k in range(12))
    ds.file_meta.TransferSyntaxUID = syntax
    if sequences:
        inner = Dataset()
        inner.CodeValue, inner.CodeMeaning = "T-D1100", "x" * 40_000
        item = Dataset()
        item.ConceptNameCodeSequence = Sequence([inner])
        ds.ContentSequence = Sequence([item, item])
        ds["ContentSequence"].is_undefined_length = True
        ds["ContentSequence"].value[0]["ConceptNameCodeSequence"].is_undefined_length = True
    path = tmp_path / "encoded.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("syntax", "sequences"),
    [
        ("1.2.840.10008.1.2", False),
        ("1.2.840.10008.1.2.2", False),
        ("1.2.840.10008.1.2.1", True),
        ("1.2.840.10008.1.2", True),
    ],
)
def test_headers_of_every_encoding_are_walked(
    syntax: str, sequences: bool, serve: Any, pixels: np.ndarray, tmp_path: Path
) -> None:
    path = _native_with(tmp_path, pixels, syntax, sequences)
    url, route = serve(path)
    fetched = fetch(url, tmp_path / "out", (7, 7))
    assert fetched.ranged
    assert np.array_equal(decoded(fetched.path, 6), decoded(path, 6))
    header = path.stat().st_size - 12 * 128 * 128 * 2
    assert route.served <= header + 128 * 128 * 2 + SLACK


# --------------------------------------------------------------------------- as for whole downloads


class _Scripted(servers.RangeFile):
    """A Range-capable file whose ranged requests after the first follow a script:
    "stall" sleeps past the client's deadline, "busy" answers one 503 first."""

    def __init__(self, path: Path, script: str) -> None:
        super().__init__(path)
        self.script = script
        self.calls = 0

    def __call__(self, handler: Any) -> None:
        self.calls += 1
        if self.calls > 1 and self.script == "stall":
            time.sleep(3)
        if self.calls == 2 and self.script == "busy":
            servers.send(handler, 503, b"busy")
            return
        super().__call__(handler)


def test_ranges_keep_the_deadline(
    files: dict[str, Path], http_server: servers.HttpServer, tmp_path: Path
) -> None:
    url = http_server.route("/stall/bot.dcm", _Scripted(files["bot"], "stall"))
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        fetch(url, tmp_path, (9, 9), deadline_seconds=1.5, read_timeout=1.0, retries=0)
    assert time.monotonic() - started < 2.5
    assert list(tmp_path.iterdir()) == []


def test_ranges_are_retried(
    files: dict[str, Path], http_server: servers.HttpServer, pixels: np.ndarray, tmp_path: Path
) -> None:
    route = _Scripted(files["bot"], "busy")
    url = http_server.route("/busy/bot.dcm", route)
    fetched = fetch(url, tmp_path, (9, 9))
    assert fetched.ranged and route.calls >= 3
    assert np.array_equal(decoded(fetched.path, 8), frame_pixels(pixels, 8))


def test_ranges_obey_the_url_policy(
    files: dict[str, Path], http_server: servers.HttpServer, tmp_path: Path
) -> None:
    url = http_server.route("/away/bot.dcm", servers.redirect("http://169.254.169.254/bot.dcm"))
    with pytest.raises(BlockedByPolicy):
        fetch(url, tmp_path, (1, 1))
    assert list(tmp_path.iterdir()) == []


def test_ranged_logs_and_errors_hide_secrets(
    files: dict[str, Path],
    serve: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, _ = serve(files["bot"], "shifted")
    secret_url = url + "?X-Amz-Signature=TOPSECRET"
    with caplog.at_level(logging.INFO):
        fetched = fetch(secret_url, tmp_path / "ok", (3, 3))
        with pytest.raises(TooLarge) as caught:
            fetch(secret_url, tmp_path / "capped", (3, 3), max_bytes=MIB)
    assert not fetched.ranged
    assert "TOPSECRET" not in caplog.text and "TOPSECRET" not in caught.value.message
    assert list((tmp_path / "capped").iterdir()) == []


@pytest.mark.parametrize("layout", ["native", "bot", "eot", "none"])
def test_a_frame_is_decoded_without_reading_every_frame(
    layout: str, files: dict[str, Path]
) -> None:
    from pydicom.dataelem import RawDataElement

    ds = dicom_dataset.read_dataset(files[layout], 1 << 30)
    module = dicom_dataset.image_pixel_module(ds, 1 << 30)
    dicom_dataset.check_pixel_data_length(ds, module)
    dicom_dataset.decode_frame(ds, 3, module)
    raw = ds._dict[0x7FE00010]
    assert isinstance(raw, RawDataElement) and raw.value is None


@pytest.mark.parametrize("output", ["gif", "png"])
def test_animations_and_contact_sheets_fetch_only_their_frames(
    output: str, files: dict[str, Path], serve: Any, pixels: np.ndarray, tmp_path: Path
) -> None:
    import dicom_converter
    from render_options import FrameRange, RenderOptions

    path = files["bot"]
    url, route = serve(path)
    fetched = fetch(url, tmp_path, (20, 25))
    assert fetched.ranged
    assert route.served <= sum(frame_length(path, "bot", i, pixels) for i in range(19, 25)) + SLACK
    options = RenderOptions(output, frames=FrameRange(20, 25))
    ranged = dicom_converter.render(fetched.path, options)
    assert ranged.frame_range == (20, 25)
    assert ranged.image == dicom_converter.render(path, options).image
