"""Stamp executed notebooks, publish a reference run into the book, and generate the results pages.

    python -m stsynth_lib.book.publish stamp book/executed/smoke/06_evaluate.ipynb --profile smoke
    python -m stsynth_lib.book.publish publish --profile sn7_real_128     # book/executed/<p>/ -> book/reference/<p>/
    python -m stsynth_lib.book.publish stage --source reference --out build/book   # what `make book` builds
    python -m stsynth_lib.book.publish readme [--check]                    # README results block
"""

from __future__ import annotations

import argparse
import sys

from stsynth_lib.book.publish.pages import stage_book, update_readme
from stsynth_lib.book.publish.reference import MAX_TOTAL_MB, publish
from stsynth_lib.book.publish.stamp import PublishError, format_duration, git_commit, stamp_notebook


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stsynth_lib.book.publish", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stamp", help="stamp executed notebooks (profile, data kind, commit, date, machine, wall time)")
    s.add_argument("notebooks", nargs="+")
    s.add_argument("--profile", required=True)
    s.add_argument("--wall-s", type=float, default=None, help="default: papermill's measured duration")
    s.add_argument("--commit", default=None, help="the commit the notebook ran at (make nb records it before the run); "
                                                  "default: the checkout's commit now")
    sub.add_parser("commit", help="print the checkout's commit as stamps record it (with -dirty for local changes)")
    p = sub.add_parser("publish", help="copy book/executed/<profile>/ into book/reference/<profile>/ (cleaned)")
    p.add_argument("--profile", required=True)
    p.add_argument("--max-mb", type=float, default=MAX_TOTAL_MB)
    g = sub.add_parser("stage", help="lay out the book to build (no notebook is executed)")
    g.add_argument("--source", choices=("reference", "executed"), default="reference")
    g.add_argument("--profile", default=None)
    g.add_argument("--out", default="build/book")
    r = sub.add_parser("readme", help="rewrite (or --check) the README's generated results block")
    r.add_argument("--check", action="store_true")
    r.add_argument("--readme", default="README.md")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "stamp":
            for nb in a.notebooks:
                st = stamp_notebook(nb, a.profile, wall_s=a.wall_s, commit=a.commit or None)
                print(f"stamped {nb}: {st['profile']} ({st['data']}), {st['commit']}, {format_duration(st['wall_s'])}")
        elif a.cmd == "commit":
            print(git_commit())
        elif a.cmd == "publish":
            publish(a.profile, max_total_mb=a.max_mb)
        elif a.cmd == "stage":
            out = stage_book(a.source, a.profile, out=a.out)
            print(f"staged the book ({a.source}) in {out}/")
        elif a.cmd == "readme":
            ok = update_readme(a.readme, check=a.check)
            if a.check and not ok:
                print(f"{a.readme}'s results block differs from book/reference/*/results/summary.json: "
                      f"run make readme-results")
                return 1
            print(f"{a.readme}: results block " + ("up to date" if ok else "rewritten"))
    except PublishError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

