"""Tests of skddh._atomic: a write is complete or leaves the old file byte for byte."""

import errno
import os
import stat

import matplotlib
import pandas as pd
import pytest

from skddh._atomic import atomic_savefig, atomic_to_csv, atomic_write, atomic_write_text

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OLD = b"the old, complete content\n" * 100


def _disk_full():
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(OLD)
    return path


def _names(directory):
    return sorted(p.name for p in directory.iterdir())


def test_a_complete_write_replaces_the_file(old_file):
    with atomic_write(old_file, "wb") as f:
        f.write(b"new")
    assert old_file.read_bytes() == b"new"
    assert _names(old_file.parent) == ["out.bin"]


@pytest.mark.parametrize("error", [_disk_full(), KeyboardInterrupt(), ValueError("bug")])
def test_an_exception_mid_write_leaves_the_old_file_and_no_temp_file(old_file, error):
    with pytest.raises(type(error)), atomic_write(old_file, "wb") as f:
        f.write(b"half of the new content")
        raise error
    assert old_file.read_bytes() == OLD
    assert _names(old_file.parent) == ["out.bin"]


def test_a_failing_fsync_leaves_the_old_file(old_file, monkeypatch):
    # A full disk often shows only when the data is flushed.
    def fsync(fd):
        raise _disk_full()

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"), atomic_write(old_file, "wb") as f:
        f.write(b"new")
    assert old_file.read_bytes() == OLD
    assert _names(old_file.parent) == ["out.bin"]


def test_a_failed_first_write_creates_nothing(tmp_path):
    with pytest.raises(OSError), atomic_write(tmp_path / "new.txt") as f:
        f.write("half")
        raise _disk_full()
    assert _names(tmp_path) == []


def test_permissions_are_those_of_a_plain_write(tmp_path, old_file):
    old_file.chmod(0o640)
    with atomic_write(old_file, "wb") as f:
        f.write(b"new")
    assert stat.S_IMODE(old_file.stat().st_mode) == 0o640  # kept, not mkstemp's 0o600
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_text(tmp_path / "fresh.txt", "x")
    assert stat.S_IMODE((tmp_path / "fresh.txt").stat().st_mode) == 0o666 & ~umask


def test_only_whole_file_write_modes(tmp_path):
    for mode in ("a", "r+", "x"):
        with pytest.raises(ValueError, match="whole files"), atomic_write(tmp_path / "f", mode):
            pass
    assert _names(tmp_path) == []


def test_atomic_to_csv_and_write_text(tmp_path, monkeypatch):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    path = tmp_path / "t.csv"
    atomic_to_csv(frame, path, index=False)
    pd.testing.assert_frame_equal(pd.read_csv(path), frame)
    old = path.read_bytes()

    def half_then_full(self, f, **kwargs):
        f.write("a,b\n1,")
        raise _disk_full()

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_full)
    with pytest.raises(OSError):
        atomic_to_csv(frame, path, index=False)
    assert path.read_bytes() == old and _names(tmp_path) == ["t.csv"]
    atomic_write_text(tmp_path / "r.md", "# report\n")
    assert (tmp_path / "r.md").read_text() == "# report\n"


def test_atomic_savefig(tmp_path, monkeypatch):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = tmp_path / "fig.png"
    atomic_savefig(fig, path, dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    old = path.read_bytes()

    def half_then_full(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise _disk_full()

    monkeypatch.setattr(type(fig), "savefig", half_then_full)
    with pytest.raises(OSError):
        atomic_savefig(fig, path)
    plt.close(fig)
    assert path.read_bytes() == old and _names(tmp_path) == ["fig.png"]
