"""Render a local DICOM file into the temp folder and print what was applied.

    python test_local_dicom.py [PATH] [--cleanup] [--format jpg|png|webp] [--quality N]

Without PATH it renders CT_small.dcm from pydicom's bundled test files. The
image goes to ``temp/converted_<name>.<format>`` beside this script; with
``--cleanup`` it is removed again after the check. This is the seed's local
test command, kept for people who test a file before deploying.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dicom_converter import RenderOptions, cli_limits, render
from errors import ServiceError

TEMP = Path(__file__).resolve().with_name("temp")


def bundled_sample() -> Path:
    """CT_small.dcm as shipped inside pydicom's wheel (never downloaded)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm", download=False) or "CT_small.dcm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "path", type=Path, nargs="?", help="a DICOM file (default: the bundled CT_small.dcm)"
    )
    parser.add_argument("--cleanup", action="store_true", help="remove the image afterwards")
    parser.add_argument("--format", default="jpg", choices=("jpg", "jpeg", "png", "webp"))
    parser.add_argument("--quality", type=int)
    args = parser.parse_args(argv)
    if args.path is None:
        args.path = bundled_sample()

    try:
        options = RenderOptions(output_format=args.format, quality=args.quality)
        result = render(args.path, options, cli_limits())
    except ServiceError as exc:
        print(f"error: {args.path}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {args.path}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    TEMP.mkdir(exist_ok=True)
    output = TEMP / f"converted_{args.path.stem}.{result.format}"
    output.write_bytes(result.image)
    # The user's own file on the user's own terminal: metadata is shown here,
    # never logged by the service.
    print(json.dumps(result.describe(), indent=2, default=str))
    print(f"output: {output}")
    if args.cleanup:
        output.unlink()
        if not any(TEMP.iterdir()):
            TEMP.rmdir()
        print("cleaned up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
