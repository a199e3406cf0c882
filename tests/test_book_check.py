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


# ---- what a reader sees: nan intervals, dict dumps, long floats, tracebacks, cut-off content (book_screens)

import pytest  # noqa: E402

from stsynth_lib.book_screens import browser_findings, check_page_html, find_chromium  # noqa: E402
from stsynth_lib.book_screens import main as screens_main  # noqa: E402


def _out(inner: str, kind: str = "text_plain highlight-myst-ansi notranslate") -> str:
    """One notebook output the way MyST-NB renders it."""
    return ('<div class="cell docutils container">'
            f'<div class="cell_input docutils container"><pre>x = {{"a": 1}}</pre></div>'
            f'<div class="cell_output docutils container"><div class="output {kind}"><div class="highlight"><pre>'
            f"{inner}</pre></div></div></div></div>")


def _table(header: str, cell: str) -> str:
    return (f'<div class="cell_output docutils container"><div class="output text_html"><table class="dataframe">'
            f"<thead><tr><th></th><th>{header}</th></tr></thead><tbody><tr><th>pix2pix</th><td>{cell}</td></tr>"
            "</tbody></table></div></div>")


def _kinds(html: str) -> set[str]:
    return {f.kind for f in check_page_html(f"<html><body>{html}</body></html>", "p.html")}


def test_static_checks_flag_nan_intervals():
    assert _kinds(_table("model − persistence [95% CI over areas]", "+0.0193 [+nan, +nan]")) == {"nan interval"}
    assert _kinds(_table("PSNR (dB)", "23.1 [nan, 24.0]")) == {"nan interval"}
    assert _kinds(_table("CI low", "NaN")) == {"nan interval"}  # a bare nan in an interval column
    assert _kinds(_out("PSNR 23.1 (95% CI nan – nan)", "stream highlight-myst-ansi")) == {"nan interval"}
    assert _kinds(_out("SSIM 0.51 ± nan")) == {"nan interval"}
    found = check_page_html(_table("CI", "[nan, nan]"), "executed/06_evaluate.html")
    assert found[0].page == "executed/06_evaluate.html" and "[nan, nan]" in found[0].snippet


def test_static_checks_flag_dict_dumps_long_floats_and_tracebacks():
    assert _kinds(_out("{'tile_size_px': 128, 'bands': [1, 2, 3]}")) == {"raw dict dump"}
    assert _kinds(_out('Params:\n{"lr": 0.0002}', "stream highlight-myst-ansi")) == {"raw dict dump"}
    assert _kinds(_out("OrderedDict([('a', 1)])")) == {"raw dict dump"}
    assert _kinds(_out("final_loss: 0.9774104237556458\nimages_per_s: 9.787471681015557")) == {"long float"}
    tb = ('<div class="cell_output docutils container"><div class="output traceback highlight-ipythontb notranslate">'
          "<pre>---------\nValueError       Traceback (most recent call last)\nValueError: no tiles</pre></div></div>")
    found = check_page_html(tb, "p.html")
    assert [f.kind for f in found] == ["traceback"] and "ValueError: no tiles" in found[0].snippet
    assert _kinds(_out("Traceback (most recent call last):\n  File x\nKeyError: 'psnr'", "stream")) == {"traceback"}


def test_static_checks_pass_clean_pages():
    clean = "".join([
        "<p>Pixels are 0.5 nanometre wide; finance is not our topic. A NaN in prose is fine.</p>",
        _out("n/a (1 area)\nPSNR 23.100 dB [22.871, 23.402]\nloss 0.123456 after 1.5e-05 s"),
        _out("Loaded runs/smoke/segmenter/segmenter.pt (150 steps)", "stream highlight-myst-ansi"),
        _table("model − persistence [95% CI over areas]", "n/a (1 area)"),
        _table("PSNR (dB) ↑", "27.427 [27.093, 27.761]"),
        _table("notes", "nan"),  # a missing value outside an interval column
        _table("value", "0.0001801"),  # a small learning rate with 4 significant digits is not a long float
        '<div class="cell_input"><pre>print({"a": 1}); raise ValueError("x")  # code, not output</pre></div>',
    ])
    assert _kinds(clean) == set()


def test_book_screens_cli_without_browser(tmp_path, capsys):
    (tmp_path / "index.html").write_text('<meta http-equiv="refresh" content="0; url=intro.html">')
    (tmp_path / "intro.html").write_text(f"<html><body>{_out('PSNR 23.1 [22.8, 23.4]')}</body></html>")
    out = tmp_path / "shots"
    assert screens_main([str(tmp_path), "--out", str(out), "--no-browser"]) == 0
    (tmp_path / "bad.html").write_text(f"<html><body>{_out('{' + chr(39) + 'a' + chr(39) + ': 1}')}</body></html>")
    assert screens_main([str(tmp_path), "--out", str(out), "--no-browser"]) == 1
    assert "bad.html" in capsys.readouterr().out and (out / "findings.json").is_file()
    assert screens_main([str(tmp_path / "missing")]) == 2


@pytest.mark.skipif(find_chromium() is None, reason="Chromium not installed (apt-get install chromium)")
def test_browser_pass_flags_cut_off_tables_and_writes_screenshots(tmp_path):
    wide = "<table><tr>" + "".join(f"<td>column_{i}_with_a_long_name</td>" for i in range(12)) + "</tr></table>"
    (tmp_path / "index.html").write_text(
        "<html><body><main style='width:600px'>"
        f"<div id='clipped' style='overflow:hidden'>{wide}</div>"
        f"<div id='scrolls' style='overflow-x:auto'>{wide}</div>"
        "<div id='wide' style='width:900px'>a box wider than the column</div>"
        "</main></body></html>"
    )
    findings, shots = browser_findings(tmp_path, tmp_path / "out", find_chromium(), width=800,
                                       pages=[tmp_path / "index.html"])
    assert [f.kind for f in findings] == ["cut off", "sticks out"], findings
    assert "div#clipped" in findings[0].snippet and "div#wide" in findings[1].snippet
    assert not any("scrolls" in f.snippet for f in findings)
    assert shots == [tmp_path / "out" / "index.png"] and shots[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
