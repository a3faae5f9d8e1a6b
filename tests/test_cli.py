"""The converter's command line, run as a user runs it: in a child process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.corpus import PROJECT, bundled_file


def run(*args: str, cwd: Path = PROJECT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_single_file_writes_the_output_file(tmp_path: Path) -> None:
    out = tmp_path / "ct.png"
    done = run(
        "dicom_converter.py",
        str(bundled_file("CT_small.dcm")),
        "-o",
        str(out),
        "--format",
        "png",
        "--width",
        "32",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert Image.open(out).size == (32, 32)


def test_the_output_file_extension_picks_the_format(tmp_path: Path) -> None:
    source = str(bundled_file("CT_small.dcm"))
    for name, expected in (
        ("ct.png", "PNG"),
        ("ct.webp", "WEBP"),
        ("ct.gif", "GIF"),
        ("ct", "JPEG"),
    ):
        done = run("dicom_converter.py", source, "-o", str(tmp_path / name))
        assert done.returncode == 0, done.stderr
        assert Image.open(tmp_path / name).format == expected
    done = run("dicom_converter.py", source, "-o", str(tmp_path / "x.png"), "--format", "jpg")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: --format jpg does not match the output file x.png; "
        "leave out --format, or name the file for the format"
    )
    assert not (tmp_path / "x.png").exists()


def test_module_form_with_window_and_metadata(tmp_path: Path) -> None:
    out = tmp_path / "mr.jpg"
    done = run(
        "-m",
        "dicom_converter",
        str(bundled_file("MR_small.dcm")),
        "-o",
        str(out),
        "--window",
        "600,1200,LINEAR_EXACT",
        "--metadata",
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["window"] == {
        "center": 600,
        "width": 1200,
        "function": "LINEAR_EXACT",
        "source": "request",
    }
    assert info["output"] == str(out) and out.exists()


def test_folder_is_converted_recursively_and_failures_are_reported(tmp_path: Path) -> None:
    source = tmp_path / "in"
    (source / "series" / "deep").mkdir(parents=True)
    shutil.copy(bundled_file("CT_small.dcm"), source / "ct.dcm")
    shutil.copy(bundled_file("MR_small.dcm"), source / "series" / "deep" / "mr.dcm")
    (source / "series" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    done = run("dicom_converter.py", str(source), "-o", str(out))
    assert done.returncode == 1
    assert (out / "ct.jpg").exists()
    assert (out / "series" / "deep" / "mr.jpg").exists()
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {source / 'series' / 'notes.txt'}: the file is not DICOM")
    assert "converted 2 of 3 file(s)" in done.stdout
    assert "1 file(s) failed" in done.stderr


def test_bad_option_is_one_clear_line(tmp_path: Path) -> None:
    done = run(
        "dicom_converter.py",
        str(bundled_file("MR_small.dcm")),
        "-o",
        str(tmp_path / "x.jpg"),
        "--window",
        "40",
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --window takes CENTER,WIDTH[,FUNCTION], got '40'"


def test_seed_local_test_command(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns(".venv", ".git", "temp"))
    done = run("test_local_dicom.py", str(bundled_file("CT_small.dcm")), cwd=project)
    assert done.returncode == 0, done.stderr
    output = project / "temp" / "converted_CT_small.jpg"
    assert f"output: {output}" in done.stdout
    assert Image.open(output).format == "JPEG"
    done = run("test_local_dicom.py", str(bundled_file("CT_small.dcm")), "--cleanup", cwd=project)
    assert done.returncode == 0 and "cleaned up" in done.stdout
    assert not (project / "temp").exists()


def test_frames_make_an_animation_and_crop_flips(tmp_path: Path) -> None:
    out = tmp_path / "cine.gif"
    done = run(
        "dicom_converter.py",
        str(bundled_file("SC_rgb_rle_2frame.dcm")),
        "-o",
        str(out),
        "--format",
        "gif",
        "--frames",
        "all",
        "--crop",
        "0,0,-50,40",
        "--metadata",
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert (info["layout"], info["frame_range"], info["frame_durations_ms"]) == (
        "animation",
        [1, 2],
        [100, 100],
    )
    with Image.open(out) as image:
        assert (image.n_frames, image.size, image.info["loop"]) == (2, (50, 40), 0)


def test_frames_in_a_still_format_make_a_contact_sheet(tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    done = run(
        "dicom_converter.py",
        str(bundled_file("SC_rgb_rle_2frame.dcm")),
        "-o",
        str(out),
        "--format",
        "png",
        "--frames",
        "1-2",
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (200, 100)


def test_bad_frames_and_crop_are_one_clear_line(tmp_path: Path) -> None:
    source = str(bundled_file("MR_small.dcm"))
    done = run("dicom_converter.py", source, "-o", str(tmp_path / "x.gif"), "--frames", "2-1")
    assert done.returncode == 2 and done.stderr.startswith("error: frames N-M needs M >= N")
    done = run("dicom_converter.py", source, "-o", str(tmp_path / "x.gif"), "--crop", "1,2")
    assert done.returncode == 2 and done.stderr.startswith("error: --crop takes X,Y,WIDTH,HEIGHT")
    done = run("dicom_converter.py", source, "-o", str(tmp_path / "x.gif"), "--frames", "1-3")
    assert done.returncode == 1 and "the image has 1 frame(s)" in done.stderr
