"""Every example command in docs/*.md runs, in order, and does what the page
says (convention: docs_harness.py, and docs/index.md for readers)."""
import os

import pytest

from docs_harness import DocShell, console_blocks, doc_files

PAGES = [p for p in doc_files() if console_blocks(p)]


def _rel(path):
    return os.path.relpath(path, os.path.dirname(os.path.dirname(path)))


@pytest.mark.frida
@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[os.path.basename(p) for p in PAGES])
def test_doc_commands__page_run_top_to_bottom__then_every_command_succeeds_with_its_sample_output(
        page, tmp_path):
    shell = DocShell(str(tmp_path))
    try:
        for block in console_blocks(page):
            if block.skip_reason is not None:
                continue
            for cmd in block.commands():
                where = f"{_rel(page)}:{cmd.line}"
                res = shell.run(shell.substitute(cmd.text))
                assert res.status == cmd.exit_status, (
                    f"{where}: `{res.command}` exited {res.status}, expected {cmd.exit_status}\n"
                    f"--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}")
                printed = " ".join(res.output.split())
                missing = [s for s in cmd.checked_sample_lines() if s not in printed]
                assert not missing, (
                    f"{where}: `{res.command}` did not print these sample lines: {missing}\n"
                    f"--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}")
    finally:
        shell.close()


def test_doc_commands__every_skipped_block__then_gives_a_reason():
    unexplained = [f"{_rel(b.path)}:{b.line}" for p in doc_files() for b in console_blocks(p)
                   if b.skip_reason == ""]
    assert unexplained == [], "doc-test: skip needs a reason in parentheses"


def test_doc_commands__skips__then_few():
    skipped = [f"{_rel(b.path)}:{b.line} ({b.skip_reason})" for p in doc_files()
               for b in console_blocks(p) if b.skip_reason is not None]
    ran = [b for p in doc_files() for b in console_blocks(p) if b.skip_reason is None]
    # Skips are for what a test cannot do (system-wide changes, minute-long
    # load tests); the rest of the docs must run.
    assert len(skipped) <= max(3, len(ran) // 5), "\n".join(skipped)


def test_doc_commands__console_blocks__then_hold_commands_only_at_dollar_prompts():
    """A command written without ``$ `` would silently not be tested."""
    bad = []
    for p in doc_files():
        for b in console_blocks(p):
            if b.lines and not b.lines[0].startswith("$ "):
                bad.append(f"{_rel(p)}:{b.line}")
    assert bad == [], "console blocks must start with a `$ ` command line"
