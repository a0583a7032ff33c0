"""What the paged ``list`` actions (``jobs list``, ``dead list``) share: the flags that choose a
page and the way a page is printed (one tab-separated line per row, the next page's token on
stderr, or the whole page as JSON)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any


def add_page_options(p: Any, noun: str) -> None:
    """--limit (help: "at most N <noun>"), --page-token and --json of a paged list action."""
    p.add_argument("--limit", type=int, default=100, metavar="N",
                   help=f"at most N {noun} (1-500; default 100)")
    p.add_argument("--page-token", default=None, metavar="TOKEN", help="the next page, as printed by the "
                                                                       "previous list")
    p.add_argument("--json", action="store_true", help="print the page as JSON")


def print_json(data: Any) -> None:
    """data as indented JSON, non-ASCII text as it is."""
    print(json.dumps(data, indent=2, ensure_ascii=False))


def print_rows(page: dict, rows: Iterable[Iterable[Any]]) -> None:
    """One tab-separated line per row, then (on stderr, so the lines stay parseable) the flag
    that reads the next page when page has one."""
    for fields in rows:
        print("\t".join(str(f) for f in fields))
    if page.get("next_page_token"):
        print(f"more: --page-token {page['next_page_token']}", file=sys.stderr)
