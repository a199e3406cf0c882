"""Check that a built Jupyter Book renders offline: no script, stylesheet or font fetched from the network.

    python -m stsynth_lib.book.check book/_build/html
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# src/href attributes of elements that the browser loads automatically (links to read elsewhere are fine).
_LOADED = re.compile(r"<(script|link|img|iframe)\b[^>]*?\b(src|href)=[\"'](https?:)?//[^\"']+[\"']", re.I)
_CSS_URL = re.compile(r"url\(\s*[\"']?(https?:)?//", re.I)
# Sphinx wraps TeX in class="math ..."; with no MathJax offline it would show as raw TeX.
_TEX = re.compile(r"class=[\"']math[ \"']")


def remote_loads(html_dir: str | Path) -> list[str]:
    """Return ``file: tag`` for every resource a page would fetch from the network."""
    found = []
    for page in sorted(Path(html_dir).rglob("*.html")):
        text = page.read_text(errors="ignore")
        for m in _LOADED.finditer(text):
            tag = m.group(0)
            if m.group(1).lower() == "link" and not re.search(r"rel=[\"'](stylesheet|preload|icon)", tag):
                continue
            found.append(f"{page}: {tag[:160]}")
    for page in sorted(Path(html_dir).rglob("*.html")):
        if _TEX.search(page.read_text(errors="ignore")):
            found.append(f"{page}: LaTeX math (no MathJax offline): write formulas in Unicode text instead")
    for css in sorted(Path(html_dir).rglob("*.css")):
        if _CSS_URL.search(css.read_text(errors="ignore")):
            found.append(f"{css}: url(//...)")
    return found


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args and args[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nWhat a reader sees (nan intervals, long floats, plurals, machine paths, split "
              "outputs, constant images, missing files, contradicted verdicts): python -m stsynth_lib.book.screens")
        return 0
    html_dir = Path(args[0] if args else "book/_build/html")
    if not (html_dir / "index.html").is_file():
        print(f"{html_dir}/index.html not found: build the book first (make book)")
        return 2
    bad = remote_loads(html_dir)
    if bad:
        print("These pages load resources from the network and will not render offline:")
        print("\n".join(bad[:20]))
        return 1
    n = len(list(html_dir.rglob("*.html")))
    print(f"book check: {n} pages, nothing loaded from the network")
    return 0


if __name__ == "__main__":
    sys.exit(main())
