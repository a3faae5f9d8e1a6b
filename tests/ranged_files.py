"""Large multi-frame DICOM files, built at test time from corpus pixels (never committed).

One builder for the ranged-read tests and ``bench/bench_ranged.py``. Frames differ
from their neighbours (each is the source image shifted), so a frame read from the
wrong offset shows. Layouts: native Explicit VR Little Endian; JPEG Lossless
(Process 14, 1.2.840.10008.1.2.4.57) with a Basic Offset Table, with no offset
table at all, or with an Extended Offset Table (one fragment per frame).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.encaps import encapsulate, encapsulate_extended

from tests.corpus import bundled_file, corpus_dir
from tests.dicom_files import image_dataset

JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
LAYOUTS = ("native", "bot", "none", "eot")
# Distinct frames encoded; longer files repeat them in turn.
VARIANTS = 8


def source_pixels(size: int = 512) -> np.ndarray:
    """A CT image (the corpus's when present, else pydicom's bundled CT) as size x size."""
    import dicom_dataset

    path = corpus_dir() / "CT-JPEGLosslessSV1.dcm"
    if not path.is_file():
        path = bundled_file("CT_small.dcm")
    ds = dicom_dataset.read_dataset(path, 1 << 30)
    module = dicom_dataset.image_pixel_module(ds, 1 << 30)
    pixels = np.asarray(dicom_dataset.decode_frame(ds, 0, module)).astype(np.int32)
    pixels = (pixels - pixels.min()).astype(np.uint16)
    reps = (-(-size // pixels.shape[0]), -(-size // pixels.shape[1]))
    return np.ascontiguousarray(np.tile(pixels, reps)[:size, :size])


def frame_pixels(pixels: np.ndarray, index: int) -> np.ndarray:
    """Frame ``index`` (0-based) of a built file."""
    return np.roll(pixels, 7 * (index % VARIANTS) + 1, axis=1)


def encoded_variants(pixels: np.ndarray) -> list[bytes]:
    import imagecodecs

    return [bytes(imagecodecs.ljpeg_encode(frame_pixels(pixels, k))) for k in range(VARIANTS)]


def build(folder: Path, layout: str, frames: int, pixels: np.ndarray, name: str = "") -> Path:
    """Write a ``frames``-frame file of ``layout`` into ``folder``; returns its path."""
    ds = image_dataset(pixels, NumberOfFrames=frames)
    if layout == "native":
        variants = [frame_pixels(pixels, k).tobytes() for k in range(VARIANTS)]
        ds.PixelData = b"".join(variants[k % VARIANTS] for k in range(frames))
    else:
        encoded = encoded_variants(pixels)
        items = [encoded[k % VARIANTS] for k in range(frames)]
        ds.file_meta.TransferSyntaxUID = JPEG_LOSSLESS
        if layout == "eot":
            data, offsets, lengths = encapsulate_extended(items)
            ds.PixelData = data
            ds.ExtendedOffsetTable = offsets
            ds.ExtendedOffsetTableLengths = lengths
        else:
            ds.PixelData = encapsulate(items, has_bot=layout == "bot")
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    path = folder / (name or f"{layout}-{frames}.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path


def frame_length(path: Path, layout: str, index: int, pixels: np.ndarray) -> int:
    """Bytes frame ``index`` takes in a built file (its item header included)."""
    if layout == "native":
        return pixels.nbytes
    stream = encoded_variants(pixels)[index % VARIANTS]
    return len(stream) + len(stream) % 2 + 8
