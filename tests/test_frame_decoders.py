"""Decoding one frame with the imagecodecs codecs, full size and reduced.

- Every corpus frame decodes to what pydicom 3.0.2 gave with its pylibjpeg
  plugins (pylibjpeg-libjpeg 2.5, pylibjpeg-openjpeg 2.6), pinned as digests
  so the comparison holds after those plugins are gone.
- Corpus pixels re-encoded at test time with imagecodecs' encoders (JPEG-LS,
  JPEG 2000, HTJ2K, JPEG XL, lossless and 12-bit JPEG; signed, 12-bit and RGB)
  decode back to the same pixels.
- Reduced decodes have the expected size and stay close to a Lanczos
  downscale of the full decode; palette and float frames are never reduced.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

import frame_decoders
from dicom_dataset import (
    ImagePixelModule,
    decode_frame,
    image_pixel_module,
    read_dataset,
    transfer_syntax,
)
from errors import CorruptDicom, TooLarge, UnsupportedTransferSyntax
from tests.corpus import bundled_file, corpus_file
from tests.dicom_files import image_dataset, write_image

BUDGET = 1 << 30
JPEG_LS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"

# sha256 (first 16 hex digits) of frame 1 as pydicom 3.0.2 decoded it with the
# pylibjpeg-libjpeg 2.5 / pylibjpeg-openjpeg 2.6 / pylibjpeg-rle 2.2 plugins.
OLD_DECODERS = {
    "CR-MONO1-10-chest.dcm": "400ebd95cd997250",
    "CR-ModalitySequenceLUT.dcm": "cbb20687fdc832cc",  # JPEG lossless SV1
    "CT-JPEGLosslessSV1.dcm": "e1df88d01c728f9d",
    "CT1_JLSN.dcm": "259364e338e50866",  # JPEG-LS near-lossless, signed
    "GH064.dcm": "98fedc68081422e4",  # JPEG 2000 lossless
    "GH1261.dcm": "e69ffd49578704ce",
    "GH1308.dcm": "30956237449634c3",
    "GH133.dcm": "cc9e4d5b757bb6ae",
    "HTJ2KLossless_08_RGB.dcm": "9d87240604f5d752",
    "JLSL_16_15_1_1F.dcm": "bb0a20c386271e83",  # JPEG-LS, 15 bits stored, signed
    "JPEGLosslessP14SV1_1s_1f_u_16_16.dcm": "958eea569c0ca6f7",
    "MAROTECH_CT_JP2Lossy.dcm": "5073c3e06f25a3c2",  # JPEG 2000 lossy
    "MR01.dcm": "f1c3fa3e3915837d",
    "NM-MONO2-16-13x-heart.dcm": "a5fc7ba96cab79ec",
    "TestPattern_Palette.dcm": "c6843c30a0b46f4f",
    "US-RGB-8-epicard.dcm": "8457b45fa7997df4",
    "YBR_422.dcm": "8abcb325f74c3b88",
    "YBR_FULL-RLE.dcm": "32dfabb26a01d797",
    "image_dfl.dcm": "1f5f1b1c1a57606a",
    "liver.dcm": "e036a07b502fdfd1",
}


def digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]


def load(path: Path) -> tuple[Dataset, ImagePixelModule]:
    ds = read_dataset(path, BUDGET)
    return ds, image_pixel_module(ds, BUDGET)


def decode(ds: Dataset, module: ImagePixelModule, reduce: int = 1) -> np.ndarray:
    return frame_decoders.decode_frame(ds, 0, module, max_pixel_bytes=BUDGET, reduce=reduce)


def corpus_pixels(name: str) -> np.ndarray:
    return decode(*load(corpus_file(name)))


def encapsulated(pixels: np.ndarray, stream: bytes, uid: str, **attrs: Any) -> Dataset:
    """An in-memory single-frame dataset holding `stream` as its one fragment."""
    ds = image_dataset(pixels, **attrs)
    ds.file_meta.TransferSyntaxUID = uid
    if "HighBit" not in attrs:
        ds.HighBit = ds.BitsStored - 1
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    return ds


def decoded(ds: Dataset, reduce: int = 1) -> np.ndarray:
    return decode(ds, image_pixel_module(ds, BUDGET), reduce)


# --- the corpus, against the old decoders -------------------------------------------


@pytest.mark.parametrize("name", sorted(OLD_DECODERS))
def test_corpus_frame_equals_the_old_decoders(name: str) -> None:
    assert digest(corpus_pixels(name)) == OLD_DECODERS[name]


def test_lossy_12_bit_jpeg_is_within_one_stored_value_of_the_old_decoder() -> None:
    # libjpeg-turbo and libjpeg round the 12-bit IDCT differently (max |diff| 1,
    # mean 0.02): the sum of 3.8 M samples moves by ~83 000 out of 1.7 billion.
    arr = corpus_pixels("RG2_JPLY_fixed.dcm")
    assert arr.shape == (2140, 1760) and arr.dtype == np.uint16
    assert abs(int(arr.astype(np.int64).sum()) - 1_698_268_331) < arr.size * 0.05


def test_ybr_jpeg_equals_libjpeg_turbo_reference() -> None:
    # The corpus reference of this YBR_FULL_422 frame is libjpeg-turbo's own
    # decode; the old libjpeg plugin differed from it by up to 7 (chroma up-sampling).
    arr = corpus_pixels("DIRW0007.dcm")
    reference = np.asarray(Image.open(corpus_file("DIRW0007.libjpeg.png")).convert("RGB"))
    assert np.array_equal(arr, reference)


def test_jpeg_xl_matches_the_djxl_reference() -> None:
    ds, module = load(corpus_file("will-jxl.dcm"))
    assert transfer_syntax(ds) == "1.2.840.10008.1.2.4.111"
    arr = decode(ds, module)
    reference = np.asarray(Image.open(corpus_file("will-jxl.djxl.png")).convert("RGB"))
    assert arr.shape == reference.shape and arr.dtype == np.uint8
    assert np.abs(arr.astype(np.int16) - reference).max() <= 1


def test_bundled_files_decode_like_pydicom() -> None:
    # pydicom's own wheel: lossless JPEG 2000 with a pixel-representation mismatch.
    ds, module = load(bundled_file("J2K_pixelrep_mismatch.dcm"))
    arr = decode(ds, module)
    assert arr.dtype == np.int16 and arr.min() < 0


# --- re-encoded corpus pixels ---------------------------------------------------------


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    """A signed 16-bit CT frame (GH1308)."""
    return corpus_pixels("GH1308.dcm")


@pytest.fixture(scope="module")
def mammo() -> np.ndarray:
    """A 1000 x 900 crop of the 12-bit GH133 mammogram."""
    return np.ascontiguousarray(corpus_pixels("GH133.dcm")[1000:2000, 600:1500])


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return corpus_pixels("US-RGB-8-epicard.dcm")


def test_jpeg_ls_signed_and_rgb(ct: np.ndarray, rgb: np.ndarray) -> None:
    stream = imagecodecs.jpegls_encode(ct.view(np.uint16))
    assert np.array_equal(decoded(encapsulated(ct, stream, JPEG_LS)), ct)
    assert np.array_equal(decoded(encapsulated(rgb, imagecodecs.jpegls_encode(rgb), JPEG_LS)), rgb)


def test_jpeg_2000_signed_and_sign_mismatch(ct: np.ndarray) -> None:
    signed = imagecodecs.jpeg2k_encode(ct, codecformat="J2K", reversible=True)
    assert np.array_equal(decoded(encapsulated(ct, signed, J2K_LOSSLESS)), ct)
    # 12-bit signed samples written as an unsigned codestream: pydicom's J2K
    # sign correction gives the signed values back.
    twelve = np.clip(ct, -2048, 2047)
    unsigned = imagecodecs.jpeg2k_encode(
        (twelve & 0xFFF).astype(np.uint16), codecformat="J2K", reversible=True, bitspersample=12
    )
    ds = encapsulated(twelve, unsigned, J2K_LOSSLESS, BitsStored=12)
    assert np.array_equal(decoded(ds), twelve)


def test_htj2k_signed_12_bit_and_rgb(ct: np.ndarray, mammo: np.ndarray, rgb: np.ndarray) -> None:
    signed = imagecodecs.htj2k_encode(ct, reversible=True)
    assert np.array_equal(decoded(encapsulated(ct, signed, HTJ2K_LOSSLESS)), ct)
    twelve = imagecodecs.htj2k_encode(mammo, reversible=True)
    ds = encapsulated(mammo, twelve, HTJ2K_LOSSLESS, BitsStored=12)
    assert np.array_equal(decoded(ds), mammo)
    colour = imagecodecs.htj2k_encode(rgb, reversible=True)
    assert np.array_equal(decoded(encapsulated(rgb, colour, HTJ2K_LOSSLESS)), rgb)


def test_jpeg_xl_grey_12_bit_and_rgb(mammo: np.ndarray, rgb: np.ndarray) -> None:
    twelve = imagecodecs.jpegxl_encode(mammo, lossless=True, bitspersample=12)
    ds = encapsulated(mammo, twelve, JPEG_XL_LOSSLESS, BitsStored=12)
    assert np.array_equal(decoded(ds), mammo)
    grey = (mammo >> 4).astype(np.uint8)
    stream = imagecodecs.jpegxl_encode(grey, lossless=True)
    assert np.array_equal(decoded(encapsulated(grey, stream, JPEG_XL_LOSSLESS)), grey)
    colour = imagecodecs.jpegxl_encode(rgb, lossless=True)
    assert np.array_equal(decoded(encapsulated(rgb, colour, JPEG_XL_LOSSLESS)), rgb)


def test_lossless_jpeg_12_bit_and_signed_16_bit(ct: np.ndarray, mammo: np.ndarray) -> None:
    twelve = imagecodecs.jpeg8_encode(mammo, lossless=True, bitspersample=12, predictor=1)
    ds = encapsulated(mammo, twelve, JPEG_LOSSLESS_SV1, BitsStored=12)
    assert np.array_equal(decoded(ds), mammo)
    signed = imagecodecs.jpeg8_encode(ct.view(np.uint16), lossless=True, predictor=1)
    assert np.array_equal(decoded(encapsulated(ct, signed, JPEG_LOSSLESS_SV1)), ct)


def test_lossy_12_bit_and_ybr_jpeg(mammo: np.ndarray, rgb: np.ndarray) -> None:
    stream = imagecodecs.jpeg8_encode(mammo, level=95, bitspersample=12)
    arr = decoded(encapsulated(mammo, stream, JPEG_EXTENDED, BitsStored=12))
    assert arr.dtype == np.uint16
    assert np.abs(arr.astype(np.int32) - mammo).mean() < 4
    ybr = imagecodecs.jpeg8_encode(rgb, level=95)  # YCbCr 4:2:0 with a JFIF marker
    ds = encapsulated(rgb, ybr, JPEG_BASELINE, PhotometricInterpretation="YBR_FULL_422")
    assert np.abs(decoded(ds).astype(np.int16) - rgb).mean() < 3


# --- reduced resolution -----------------------------------------------------------------


def lanczos(arr: np.ndarray, shape: tuple[int, int], box: tuple[float, ...]) -> np.ndarray:
    channels = [arr] if arr.ndim == 2 else [arr[..., c] for c in range(arr.shape[2])]
    resized = [
        np.asarray(
            Image.fromarray(c.astype(np.float32)).resize(shape[::-1], Image.LANCZOS, box=box)
        )
        for c in channels
    ]
    return resized[0] if arr.ndim == 2 else np.stack(resized, axis=-1)


def assert_close_to_lanczos(
    full: np.ndarray, small: np.ndarray, factor: int, *, centred: bool = True, p99: float = 12
) -> None:
    """Within mean 2 / p99 12 grey levels once the full frame's range is shown as 0..255.

    A resolution level is a sharper low-pass than a box: on frames with hard
    edges (CT bone and air, ultrasound overlays) only the mean is held.

    Compared where the small frame covers whole blocks. An area average or a
    DCT-scaled block stands for the centre of its block; a J2K resolution
    level's sample i (centred=False) for full-size sample factor * i.
    """
    rows, columns = full.shape[0] // factor, full.shape[1] // factor
    # Edge-padded by `factor` so that the box may start left of the frame.
    start = factor - (0.0 if centred else (factor - 1) / 2)
    box = (start, start, start + columns * factor, start + rows * factor)
    padding = ((factor, factor), (factor, factor)) + ((0, 0),) * (full.ndim - 2)
    low, high = np.percentile(full, (0.5, 99.5))
    scale = 255 / max(float(high - low), 1.0)
    expected = lanczos(np.pad(full, padding, mode="edge"), (rows, columns), box)
    diff = np.abs(expected - small[:rows, :columns].astype(np.float32)) * scale
    assert float(diff.mean()) <= 2, diff.mean()
    assert float(np.percentile(diff, 99)) <= p99, np.percentile(diff, 99)


def test_jpeg_2000_decodes_at_a_resolution_level(mammo: np.ndarray) -> None:
    stream = imagecodecs.jpeg2k_encode(mammo, codecformat="J2K", reversible=True, resolutions=6)
    ds = encapsulated(mammo, stream, J2K_LOSSLESS, BitsStored=12)
    small = decoded(ds, reduce=5)
    assert small.shape == (250, 225) and small.dtype == np.uint16
    assert_close_to_lanczos(mammo, small, 4, centred=False)
    # 1002 rows at 1/8 is 125.25: Pillow's rounding differs from OpenJPEG's, so 1/4.
    taller = np.ascontiguousarray(np.vstack([mammo, mammo[:2]]))
    stream = imagecodecs.jpeg2k_encode(taller, codecformat="J2K", reversible=True, resolutions=6)
    assert decoded(encapsulated(taller, stream, J2K_LOSSLESS), reduce=8).shape == (251, 225)


def test_signed_jpeg_2000_reduced_keeps_its_values(ct: np.ndarray) -> None:
    stream = imagecodecs.jpeg2k_encode(ct, codecformat="J2K", reversible=True)
    small = decoded(encapsulated(ct, stream, J2K_LOSSLESS), reduce=2)
    assert small.shape == (256, 256) and small.dtype == np.int16 and small.min() < 0
    assert_close_to_lanczos(ct, small, 2, centred=False, p99=255)


def natural_colour(mammo: np.ndarray) -> np.ndarray:
    """8-bit RGB with the mammogram's texture (the corpus's colour frames are
    ultrasound with hard-edged overlays, where any low-pass differs from Lanczos)."""
    grey = (mammo >> 4).astype(np.uint8)
    return np.ascontiguousarray(np.stack([grey, grey // 2 + 60, 255 - grey], axis=-1))


def test_htj2k_decodes_at_a_resolution_level(mammo: np.ndarray) -> None:
    stream = imagecodecs.htj2k_encode(mammo, reversible=True, resolutions=6)
    small = decoded(encapsulated(mammo, stream, HTJ2K_LOSSLESS, BitsStored=12), reduce=9)
    assert small.shape == (125, 113)
    assert_close_to_lanczos(mammo, small, 8, centred=False)
    rgb = natural_colour(mammo)
    colour = imagecodecs.htj2k_encode(rgb, reversible=True)
    small = decoded(encapsulated(rgb, colour, HTJ2K_LOSSLESS), reduce=3)
    assert small.shape == (500, 450, 3)
    assert_close_to_lanczos(rgb, small, 2, centred=False)


def test_lossy_jpeg_decodes_with_dct_scaling(mammo: np.ndarray) -> None:
    grey = (mammo >> 4).astype(np.uint8)
    stream = imagecodecs.jpeg8_encode(grey, level=95)
    small = decoded(encapsulated(grey, stream, JPEG_BASELINE), reduce=7)
    assert small.shape == (250, 225) and small.dtype == np.uint8
    assert_close_to_lanczos(grey, small, 4)
    rgb = natural_colour(mammo)
    ybr = imagecodecs.jpeg8_encode(rgb, level=95)
    ds = encapsulated(rgb, ybr, JPEG_BASELINE, PhotometricInterpretation="YBR_FULL_422")
    small = decoded(ds, reduce=3)
    assert small.shape == (500, 450, 3)
    assert_close_to_lanczos(rgb, small, 2)


def test_lossless_jpeg_and_12_bit_jpeg_are_not_reduced(mammo: np.ndarray) -> None:
    stream = imagecodecs.jpeg8_encode(mammo, lossless=True, bitspersample=12, predictor=1)
    ds = encapsulated(mammo, stream, JPEG_LOSSLESS_SV1, BitsStored=12)
    assert decoded(ds, reduce=4).shape == mammo.shape


@pytest.mark.parametrize(
    ("name", "reduce", "shape"),
    [
        ("GH1308.dcm", 4, (128, 128)),  # native, signed
        ("CR-MONO1-10-chest.dcm", 3, (147, 147)),  # native, partial edge blocks
    ],
)
def test_native_frames_are_area_averaged(name: str, reduce: int, shape: tuple[int, ...]) -> None:
    ds, module = load(corpus_file(name))
    full, small = decode(ds, module), decode(ds, module, reduce)
    assert small.shape == shape and small.dtype == full.dtype
    assert_close_to_lanczos(full, small, reduce)


def test_a_large_native_frame_is_area_averaged(tmp_path: Path, mammo: np.ndarray) -> None:
    ds, module = load(write_image(tmp_path, mammo, BitsStored=12))
    small = decode(ds, module, 9)
    assert small.shape == (112, 100)
    assert_close_to_lanczos(mammo, small, 9)


def test_rle_frames_are_area_averaged(ct: np.ndarray) -> None:
    from pydicom.pixels.encoders import RLELosslessEncoder

    frame = RLELosslessEncoder.encode(
        ct,
        rows=512,
        columns=512,
        samples_per_pixel=1,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=16,
        bits_stored=16,
        pixel_representation=1,
        number_of_frames=1,
    )
    small = decoded(encapsulated(ct, frame, "1.2.840.10008.1.2.5"), reduce=3)
    assert small.shape == (171, 171) and small.dtype == np.int16
    assert_close_to_lanczos(ct, small, 3)
    ds, module = load(corpus_file("YBR_FULL-RLE.dcm"))
    assert decode(ds, module, 3).shape == (160, 214, 3)


@pytest.mark.parametrize("name", ["TestPattern_Palette.dcm", "parametric_map_float.dcm"])
def test_palette_and_float_frames_are_never_reduced(name: str) -> None:
    ds, module = load(corpus_file(name))
    assert decode(ds, module, reduce=4).shape == (module.rows, module.columns)


def test_area_average_rounds_signed_means_and_keeps_partial_blocks() -> None:
    arr = np.array([[-3, -2, 7], [-1, -2, 8], [5, 5, 5]], dtype=np.int16)
    out = frame_decoders.area_average(arr, 2)
    # (-3 - 2 - 1 - 2) / 4 = -2; (7 + 8) / 2 = 7.5 → 8; (5 + 5) / 2 = 5; 5.
    assert out.dtype == np.int16 and out.tolist() == [[-2, 8], [5, 5]]
    big = np.full((5, 5), 65535, dtype=np.uint16)
    assert frame_decoders.area_average(big, 4).tolist() == [[65535, 65535], [65535, 65535]]


# --- checks and failures ---------------------------------------------------------------


def test_the_codestream_header_is_checked_before_decoding(mammo: np.ndarray) -> None:
    small = np.ascontiguousarray(mammo[:100, :100])
    stream = imagecodecs.jpegls_encode(small)
    claims_more = encapsulated(mammo, stream, JPEG_LS, BitsStored=16)
    with pytest.raises(CorruptDicom, match="JPEG-LS frame header claims 100 x 100"):
        decoded(claims_more)
    ds = encapsulated(small, stream, JPEG_LS)
    with pytest.raises(TooLarge, match="MAX_PIXEL_BYTES"):
        frame_decoders.decode_frame(ds, 0, image_pixel_module(ds, BUDGET), max_pixel_bytes=1000)


def test_a_damaged_stream_is_corrupt_dicom(mammo: np.ndarray) -> None:
    stream = imagecodecs.htj2k_encode(mammo, reversible=True)
    damaged = stream[:200] + bytes(len(stream) - 200)
    with pytest.raises(CorruptDicom, match="could not be decoded"):
        decoded(encapsulated(mammo, damaged, HTJ2K_LOSSLESS, BitsStored=12))
    jxl = imagecodecs.jpegxl_encode(mammo, lossless=True)
    with pytest.raises(CorruptDicom):
        decoded(encapsulated(mammo, jxl[: len(jxl) // 2], JPEG_XL_LOSSLESS))


def test_old_signature_still_decodes(tmp_path: Path) -> None:
    ds = dcmread(bundled_file("MR_small_jp2klossless.dcm"))
    module = image_pixel_module(ds, BUDGET)
    assert decode_frame(ds, 0, module).shape == (64, 64)


def test_transfer_syntax_accepts_new_codecs_and_refuses_others() -> None:
    ds = Dataset()
    ds.file_meta = Dataset()
    for uid in (JPEG_XL_LOSSLESS, HTJ2K_LOSSLESS, JPEG_LS, JPEG_LOSSLESS_SV1):
        ds.file_meta.TransferSyntaxUID = uid
        assert transfer_syntax(ds) == uid
    for uid in ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.92", "1.2.3.4"):
        ds.file_meta.TransferSyntaxUID = uid
        with pytest.raises(UnsupportedTransferSyntax, match="is not supported; supported: "):
            transfer_syntax(ds)
