"""The documentation set hangs together: relative links resolve, anchors
exist, and docs/index.md lists every page."""
import os
import re

from docs_harness import DOCS, FENCE_RE, doc_files

LINK_RE = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _without_code(text: str) -> str:
    out, in_fence = [], False
    for line in text.splitlines():
        if FENCE_RE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def anchors(path: str) -> set[str]:
    """GitHub-style heading anchors of a Markdown file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = set()
    in_fence = False
    for line in text.splitlines():
        if FENCE_RE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            found.add(slug)
    return found


def test_doc_links__relative_links_in_docs__then_targets_and_anchors_exist():
    broken = []
    for page in doc_files():
        with open(page, encoding="utf-8") as f:
            text = _without_code(f.read())
        for target in LINK_RE.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(full):
                broken.append(f"{os.path.basename(page)}: {target} (no such file)")
            elif anchor and full.endswith(".md") and anchor not in anchors(full):
                broken.append(f"{os.path.basename(page)}: {target} (no such heading)")
    assert broken == []


def test_doc_links__index__then_lists_every_page():
    with open(os.path.join(DOCS, "index.md"), encoding="utf-8") as f:
        linked = set(LINK_RE.findall(f.read()))
    pages = {os.path.basename(p) for p in doc_files()} - {"index.md"}
    assert sorted(pages - linked) == [], "docs/index.md does not link these pages"
