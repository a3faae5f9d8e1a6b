"""Lookup tables of a DICOM image, read safely: descriptors, data, segmented palettes.

Every LUT the display stages use comes from here: the Modality LUT (PS3.3
C.11.1), the VOI LUT (C.11.2) and the palette colour tables (C.7.6.3.1.5,
C.7.9). A LUT is validated before it is used: its descriptor is three integers
with an allowed bit depth, its data are integers, and no table, once expanded,
has more than 65,536 entries. A malformed table is a corrupt file (422), never
a crash or an allocation the size of the claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from errors import CorruptDicom, UnsupportedImage

if TYPE_CHECKING:
    import numpy as np
    from pydicom.dataset import Dataset

MAX_LUT_ENTRIES = 65536
# PS3.3 C.11.1.1.1 and C.11.2.1.1 allow 8 to 16 bits per Modality and VOI LUT
# entry; C.7.6.3.1.5 allows 8 or 16 for palettes.
LUT_DEPTHS = range(8, 17)
PALETTE_DEPTHS = (8, 16)
PALETTE_COLOURS = ("Red", "Green", "Blue")


def first_lut_item(ds: Dataset, keyword: str) -> Dataset | None:
    """The first item of a LUT sequence, or None when it is absent or empty.

    Writers leave present-but-empty sequences and items; those mean "no LUT".
    An item with a descriptor or data is a LUT, and is validated when used.
    """
    from pydicom.sequence import Sequence as DicomSequence

    sequence = ds.get(keyword)
    if not sequence:
        return None
    if not isinstance(sequence, DicomSequence):
        raise CorruptDicom(f"{keyword} must be a sequence of LUT items")
    item = sequence[0]
    if not item.get("LUTDescriptor") and not item.get("LUTData"):
        return None
    return item


def lut_lookup(values: np.ndarray, first_mapped: int, data: np.ndarray) -> np.ndarray:
    """Map values through one LUT (PS3.3 C.11.1.1.1 / C.11.2.1.1 LUT Descriptor).

    Values below the first mapped value take the first entry, values past the
    end take the last. (pydicom's apply_voi indexes with the LUT's own 8-bit
    dtype, which wraps for LUTs longer than 256 entries.)
    """
    import numpy as np

    index = np.rint(values).astype(np.int64) - first_mapped
    return data[np.clip(index, 0, data.size - 1)].astype(np.float64)


def _values(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def lut_descriptor(value: Any, name: str, depths: Sequence[int]) -> tuple[int, int, int]:
    """A LUT Descriptor as (entries, first mapped value, bits per entry).

    It must be three integers: the entry count (0 means 65,536; a descriptor
    read as SS wraps counts over 32,767), the first stored value mapped, and
    the bits of each entry, one of `depths`. Anything else is a corrupt file.
    """
    values = _values(value)
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise CorruptDicom(
            f"{name} must be three integers (entries, first mapped value, bits per entry)"
        )
    entries, first, bits = values
    if not -32768 <= entries < MAX_LUT_ENTRIES:
        raise CorruptDicom(f"{name} gives more than {MAX_LUT_ENTRIES} entries")
    if bits not in depths:
        allowed = f"{depths[0]} to {depths[-1]}" if isinstance(depths, range) else "8 or 16"
        raise CorruptDicom(f"{name} gives {bits} bits per entry; it must be {allowed}")
    return entries % MAX_LUT_ENTRIES or MAX_LUT_ENTRIES, first, bits


def lut_words(value: Any, name: str, little_endian: bool, itemsize: int = 2) -> np.ndarray:
    """LUT Data as int64: OB/OW bytes in the dataset's byte order, or US/SS integers.

    Anything but integers (text, decimals) is a corrupt file, not a crash.
    """
    import numpy as np

    if isinstance(value, (bytes, bytearray)):
        if len(value) % itemsize:
            raise CorruptDicom(f"{name} has an odd length for {itemsize * 8}-bit entries")
        dtype = np.dtype(f"{'<' if little_endian else '>'}u{itemsize}")
        data = np.frombuffer(value, dtype=dtype).astype(np.int64)
    else:
        try:
            data = np.asarray(_values(value))
        except (TypeError, ValueError):
            data = np.asarray([], dtype=object)
        if data.dtype.kind not in "iu":
            raise CorruptDicom(f"{name} must hold integers")
        data = data.astype(np.int64)
    if data.size == 0:
        raise CorruptDicom(f"{name} is empty")
    return data


def lut_item_table(item: Dataset, ds: Dataset, keyword: str) -> tuple[int, np.ndarray, int]:
    """One Modality or VOI LUT item as (first mapped value, data, bits per entry)."""
    entries, first, bits = lut_descriptor(
        item.get("LUTDescriptor"), f"the {keyword} LUT Descriptor", LUT_DEPTHS
    )
    element = item.get(0x00283006)  # LUT Data
    if element is None:
        raise CorruptDicom(f"a {keyword} item has a LUT Descriptor but no LUT Data")
    data = lut_words(element.value, f"the {keyword} LUT Data", _little_endian(ds))
    return first, data[:entries], bits


def _little_endian(ds: Dataset) -> bool:
    return ds.original_encoding[1] is not False


def check_palette_depth(is_float: bool, bits_allocated: int) -> None:
    """Palette indices are 8 or 16 bits (C.7.6.3.1.5): wider ones need a 2^32-entry domain."""
    if is_float or bits_allocated > 16:
        raise UnsupportedImage(
            f"PALETTE COLOR images with {bits_allocated}-bit"
            f"{' float' if is_float else ''} pixels are not supported; at most 16 bits are"
        )


def palette_tables(ds: Dataset) -> tuple[int, np.ndarray]:
    """PS3.3 C.7.6.3.1.5 and C.7.9: the first mapped value and the 8-bit R, G, B tables.

    The tables form a (3, entries) uint8 array. The three descriptors must be
    identical. An Alpha Palette Color Lookup Table is ignored: the output is
    opaque RGB.
    """
    import numpy as np

    descriptors = {
        lut_descriptor(
            ds.get(f"{colour}PaletteColorLookupTableDescriptor"),
            f"{colour}PaletteColorLookupTableDescriptor",
            PALETTE_DEPTHS,
        )
        for colour in PALETTE_COLOURS
    }
    if len(descriptors) != 1:
        raise CorruptDicom(
            "the Red, Green and Blue Palette Color Lookup Table Descriptors must be identical"
        )
    entries, first, bits = descriptors.pop()
    tables = [_palette_channel(ds, colour, entries, bits) for colour in PALETTE_COLOURS]
    if len({table.size for table in tables}) != 1:
        raise CorruptDicom("the Red, Green and Blue palette tables have different lengths")
    if tables[0].size == 0:
        raise CorruptDicom("the palette colour lookup tables hold no entries")
    table = np.stack(tables)
    if bits > 8:
        return first, np.rint(table / 257.0).astype(np.uint8)
    # Entries declared 8-bit but stored in 16-bit words keep their low byte.
    return first, table.astype(np.uint8)


def _palette_channel(ds: Dataset, colour: str, entries: int, bits: int) -> np.ndarray:
    """One palette table, plain or segmented, at most `entries` long."""
    import numpy as np

    little = _little_endian(ds)
    plain = ds.get(f"{colour}PaletteColorLookupTableData")
    if has_values(plain):
        name = f"{colour}PaletteColorLookupTableData"
        if not isinstance(plain, (bytes, bytearray)):
            return lut_words(plain, name, little)[:entries]
        # 8-bit entries may be packed (one byte each, padded to even) or stored in
        # 16-bit words; pydicom tells them apart by the length the same way.
        if len(plain) in (entries, entries + 1):
            return np.frombuffer(plain, dtype=np.uint8, count=entries).astype(np.int64)
        if len(plain) == 2 * entries:
            return lut_words(plain, name, little)
        raise CorruptDicom(f"{name} does not hold the {entries} entries its descriptor gives")
    segmented = ds.get(f"Segmented{colour}PaletteColorLookupTableData")
    name = f"Segmented{colour}PaletteColorLookupTableData"
    if not has_values(segmented):
        raise CorruptDicom(f"the image has no {colour} Palette Color Lookup Table Data")
    words = lut_words(segmented, name, little, itemsize=1 if bits == 8 else 2)
    expanded = SegmentedLut(words.tolist(), eight_bit_order(bits, little)).expand()
    return np.asarray(expanded[:entries], dtype=np.int64)


def has_values(value: object) -> bool:
    """Whether an element value holds anything; a single number counts as one value."""
    if value is None:
        return False
    try:
        return len(value) > 0  # type: ignore[arg-type]
    except TypeError:
        return True


def eight_bit_order(bits: int, little: bool) -> tuple[int, int, int, int] | None:
    """Which bytes of an 8-bit indirect segment hold the offset, most significant first."""
    if bits != 8:
        return None
    return (3, 2, 1, 0) if little else (2, 3, 0, 1)


class SegmentedLut:
    """PS3.3 C.7.9.2: expand segmented palette data, bounded in entries and in work.

    A segment list of a kilobyte can describe gigabytes (long linear runs,
    indirect segments copying each other), so the expansion stops with a
    corrupt-file error past 65,536 entries, too many segments, or indirect
    segments nested too deep. Offsets of indirect segments count entries from
    the start of the data, as pydicom reads them.
    """

    MAX_SEGMENTS = 1 << 18
    MAX_DEPTH = 4

    def __init__(self, data: list[int], eight_bit: tuple[int, int, int, int] | None) -> None:
        self.data = data
        self.eight_bit = eight_bit
        self.out: list[int] = []
        self.segments = 0

    def expand(self, offset: int = 0, count: int | None = None, depth: int = 0) -> list[int]:
        data, done = self.data, 0
        while offset + 1 < len(data) and done != count:
            self.segments += 1
            if self.segments > self.MAX_SEGMENTS or depth > self.MAX_DEPTH:
                raise CorruptDicom("the segmented palette colour table has too many segments")
            opcode, length = data[offset], data[offset + 1]
            offset += 2
            if opcode == 0:  # C.7.9.2.1 discrete
                self._grow(length)
                self.out.extend(data[offset : offset + length])
                offset += length
            elif opcode == 1 and offset < len(data):  # C.7.9.2.2 linear
                self._linear(length, data[offset])
                offset += 1
            elif opcode == 2 and self.out:  # C.7.9.2.3 indirect
                offset = self._indirect(offset, length, depth)
            else:
                raise CorruptDicom("the segmented palette colour table has an invalid segment")
            done += 1
        return self.out

    def _grow(self, length: int) -> None:
        if len(self.out) + length > MAX_LUT_ENTRIES:
            raise CorruptDicom(
                f"the segmented palette colour table expands past {MAX_LUT_ENTRIES} entries"
            )

    def _linear(self, length: int, end: int) -> None:
        import numpy as np

        if not self.out:
            raise CorruptDicom("the segmented palette colour table starts with a linear segment")
        self._grow(length)
        start = self.out[-1]
        if start == end:
            self.out.extend([end] * length)
        elif length:
            step = (end - start) / length
            self.out.extend(int(v) for v in np.around(np.linspace(start + step, end, length)))

    def _indirect(self, offset: int, count: int, depth: int) -> int:
        data = self.data
        if self.eight_bit is not None:
            if offset + 4 > len(data):
                raise CorruptDicom("the segmented palette colour table is truncated")
            b = [data[offset + i] for i in self.eight_bit]
            target = (b[0] << 8 | b[1]) << 16 | (b[2] << 8 | b[3])
            offset += 4
        else:
            if offset + 2 > len(data):
                raise CorruptDicom("the segmented palette colour table is truncated")
            target = data[offset + 1] << 16 | data[offset]
            offset += 2
        self.expand(target, count, depth + 1)
        return offset
