"""Every relative link in README.md and docs/*.md leads to a file or folder that exists (relative to
the page, as a reader's browser resolves it), and every repository path named in backticks exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# a backticked repository path: a top-level folder of the project, then more path
CODE_PATH = re.compile(r"`((?:dvflnet|dvfl_kernels|bench|tests|csrc|configs|docs)/[A-Za-z0-9_./-]+)`")


def _dead_links(page: Path) -> list[str]:
    dead = []
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the page
            if not (page.parent / target.split("#")[0]).exists():
                dead.append(f"{page.relative_to(ROOT)}:{number}: link {target}")
        for path in CODE_PATH.findall(line):
            if "*" in path or "<" in path:
                continue
            if not (ROOT / path.rstrip("/.")).exists():
                dead.append(f"{page.relative_to(ROOT)}:{number}: path {path}")
    return dead


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_and_path_exists(page):
    assert not _dead_links(page), "\n".join(_dead_links(page))
