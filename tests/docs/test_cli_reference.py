import os

from lanetrace.cli.reference import render

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cli_reference__generated_from_parser__then_docs_file_is_current():
    with open(os.path.join(REPO, "docs", "cli.md")) as f:
        on_disk = f.read()
    assert on_disk == render(), "docs/cli.md is stale: python -m lanetrace.cli.reference > docs/cli.md"
