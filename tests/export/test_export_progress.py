"""The progress bar appears on a terminal and nowhere else."""
import os
import pty
import select
import subprocess
import sys

from .atf_builder import nested_trace

from lanetrace.cli import main


def test_export_progress__stderr_is_a_tty__then_bar_drawn(tmp_path):
    trace = nested_trace(tmp_path / "t")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "lanetrace", "export", trace, "-f", "jsonl",
                                 "-o", str(tmp_path / "run.jsonl")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    text = b"".join(chunks).decode()
    assert "exporting jsonl [" in text and "100.0%" in text


def test_export_progress__stderr_not_a_tty__then_no_bar(tmp_path, capsys):
    trace = nested_trace(tmp_path / "t")
    assert main(["export", trace, "-f", "jsonl", "-o", str(tmp_path / "run.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "exporting" not in err
