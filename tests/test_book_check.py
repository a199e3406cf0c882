"""The offline-rendering check of the built book."""

from stsynth_lib.book_check import main, remote_loads


def test_book_check_flags_network_loads_and_raw_tex(tmp_path):
    (tmp_path / "index.html").write_text('<script src="_static/a.js"></script><a href="https://x.org">read</a>')
    assert remote_loads(tmp_path) == [] and main([str(tmp_path)]) == 0
    (tmp_path / "cdn.html").write_text('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>')
    (tmp_path / "tex.html").write_text('<div class="math notranslate nohighlight">\\[x^2\\]</div>')
    bad = remote_loads(tmp_path)
    assert any("cdn.html" in b for b in bad) and any("LaTeX" in b for b in bad)
    assert main([str(tmp_path)]) == 1
    assert main([str(tmp_path / "missing")]) == 2
