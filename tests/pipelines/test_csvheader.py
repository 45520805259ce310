"""Header checks read a bounded prefix of a regular file, and quote no content (issue 11, 4 and 8).

``pipelines.read_csv_header`` and the bundled pipelines' checks
(``pipelines/ahgd/headers.py``) on real files, links and FIFOs.
"""

from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from pipelines import InputError
from pipelines.ahgd import mortality, seifa
from pipelines.ahgd.headers import read_header

SECRET = "SECRET-LINE root:$6$notarealhash:19000:0:99999:7:::"


def flat_file(path: Path, mib: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(b"x," * (1 << 19))
    return path


def test_a_newline_free_file_is_refused_from_its_first_mib(tmp_path):
    path = flat_file(tmp_path / "flat.csv", 32)
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as err:
            read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(err.value) == (
        "flat.csv: its first line is longer than 1 MiB (ahgd reads at most 1 MiB to find the "
        "header), so it has no CSV header row; check that it is a CSV file whose first row "
        "names the columns")
    assert peak < 16 * (1 << 20), f"reading the header allocated {peak / (1 << 20):.0f} MiB"
    assert seifa.check_input(path) == str(err.value)


def test_a_header_within_the_limit_is_read_whatever_follows(tmp_path):
    from pipelines import read_csv_header

    path = tmp_path / "wide.csv"
    names = [f"c{i}" for i in range(100)]
    path.write_text(",".join(names) + "\n" + "1," * 99 + "1\n" + "z" * (3 << 20))
    assert read_csv_header(path) == names
    with pytest.raises(InputError, match="longer than 64 bytes"):
        read_csv_header(path, limit=64)


def test_a_link_is_refused_without_reading_its_target(tmp_path):
    private = tmp_path / "private.csv"
    private.write_text(SECRET + ",sa2_code\n1,2\n")
    link = tmp_path / "seifa.csv"
    os.symlink(private, link)
    for problem in (seifa.check_input(link), mortality.check_input(link)):
        assert problem == ("seifa.csv is a symbolic link or a special file; only regular files "
                           "are read (copy the file itself there)")
    with pytest.raises(InputError) as err:
        read_header(link)
    assert "SECRET" not in str(err.value)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    result: list = []
    t = threading.Thread(target=lambda: result.append(seifa.check_input(fifo)), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "reading the header of a FIFO blocked"
    assert result == ["pipe.csv is not a regular file; only regular files are read"]


def test_messages_show_column_names_cut_short(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("a" * 300 + ",b\n1,2\n")
    problem = seifa.check_input(path)
    assert problem.startswith("odd.csv is not an ABS SEIFA by SA2 table: missing column(s) ")
    assert "(its columns: " + "a" * 25 + "..." + "a" * 12 + ", b)" in problem
    assert "a" * 41 not in problem
    # cut in the middle: the ABS's long names differ at their ends
    from pipelines.tables.headers import shown

    assert shown("Index of Relative Socio-economic Disadvantage - Decile") != \
        shown("Index of Relative Socio-economic Disadvantage - Score")
