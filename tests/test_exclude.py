"""Exclude lists (data.exclude): the list format, and training without the listed images."""

import hashlib
import shutil

import pytest
from PIL import Image

from facemask.config.schema import ConfigError
from facemask.data.exclude import apply_exclusion, read_exclude_list, write_exclude_list
from facemask.data.inspection import inspect_image
from facemask.data.synthetic import sample


def _image(path, index):
    path.parent.mkdir(parents=True, exist_ok=True)
    sample(5, index, 32)[0].save(path, format="PNG")
    return path


def test_a_written_list_reads_back_and_digests_are_the_audits(tmp_path):
    a, b = _image(tmp_path / "imgs" / "a.png", 0), _image(tmp_path / "imgs" / "b.png", 1)
    audit = {p: inspect_image({"path": str(p), "bytes": None}, 8).sha256 for p in (a, b)}
    assert audit[a] == hashlib.sha256(a.read_bytes()).hexdigest()
    drawn = hashlib.sha256(b"held in a dataset").hexdigest()
    lists = tmp_path / "lists"
    lists.mkdir()
    written = write_exclude_list(lists / "exclude.txt", [(str(a), audit[a]), (None, drawn.upper())],
                                 header="flagged by label-issues\nK = 5")
    text = written.read_text(encoding="utf-8")
    assert text.splitlines() == ["# flagged by label-issues", "# K = 5", f"{a.resolve()}\tsha256:{audit[a]}",
                                 f"sha256:{drawn}"]
    found = read_exclude_list(written)
    assert found.name == "exclude.txt" and found.digests == {audit[a], drawn} and found.not_found == 0
    assert [(e.line, e.path, e.sha256) for e in found.entries] == [(3, str(a.resolve()), audit[a]), (4, None, drawn)]

    # Hand-written: bare paths relative to the list's folder are read for their digest; a missing
    # one without a digest is counted, one with a digest still matches by it; CRLF and blanks are fine.
    a.rename(tmp_path / "imgs" / "moved.png")
    hand = lists / "hand.txt"
    hand.write_bytes(("\ufeff# mine\r\n\r\n../imgs/b.png\r\n../imgs/a.png\r\n"
                      f"../imgs/a.png\tsha256:{audit[a]}\r\n").encode("utf-8"))
    found = read_exclude_list(hand)
    assert found.digests == {audit[a], audit[b]} and found.not_found == 1 and len(found.entries) == 3
    assert [e.sha256 for e in found.entries] == [audit[b], None, audit[a]]

    with pytest.raises(ValueError, match="not a SHA-256"):
        write_exclude_list(lists / "bad.txt", [(str(b), "abc")])


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("folder", "is a folder"),
    ("png", r"not a text list \(it holds NUL bytes: an image"),
    (b"a.png\ncaf\xe9.png\n", r"not a text list \(byte 9 is not UTF-8"),
    (b"# ok\na.png\nsha256:1234\n", "line 3: 'sha256:1234' is not a digest"),
    (b"a.png\tmd5:00\n", "line 1: after the tab comes the file's digest"),
])
def test_a_bad_list_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "exclude.txt"
    if content == "folder":
        path.mkdir()
    elif content == "png":
        _image(path, 0)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as err:
        read_exclude_list(path)
    assert str(path) in str(err.value) and "data.exclude" in str(err.value)


def test_listed_images_leave_the_training_splits_and_evaluation_ones_only_when_asked(tmp_path):
    digests = [f"{k:064x}" for k in range(8)] + [None]
    members = {"train": [0, 1, 2, 8], "validation": [3, 4], "test": [5, 6], "extra": [7]}
    path = tmp_path / "x.txt"
    path.write_text("".join(f"sha256:{digests[k]}\n" for k in (1, 3, 5, 7)) + f"sha256:{'f' * 64}\nnone.png\n")
    listed = read_exclude_list(path)
    kept, record = apply_exclusion(listed, members, digests, ("train", "validation"), drop_evaluation=False)
    assert kept == {"train": [0, 2, 8], "validation": [4], "test": [5, 6], "extra": [7]}
    assert record == {"list": "x.txt", "lines": 6, "images_listed": 5, "excluded": {"train": 1, "validation": 1},
                      "kept_in_evaluation": {"test": 1, "extra": 1}, "evaluation_cleaned": False,
                      "not_found": 1, "unmatched": 1}
    kept, record = apply_exclusion(listed, members, digests, ("train", "validation"), drop_evaluation=True)
    assert kept == {"train": [0, 2, 8], "validation": [4], "test": [6], "extra": []}
    assert record["excluded"] == {"train": 1, "validation": 1, "test": 1, "extra": 1}
    assert record["kept_in_evaluation"] == {} and record["evaluation_cleaned"]
    # A copy of a listed image is the listed image.
    shutil.copy(path, tmp_path / "y.txt")
    digests[0] = digests[1]
    kept, _ = apply_exclusion(read_exclude_list(tmp_path / "y.txt"), members, digests, ("train",), False)
    assert kept["train"] == [2, 8]
