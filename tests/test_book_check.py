"""The offline-rendering check of the built book."""

from stsynth_lib.book.check import main, remote_loads


def test_book_check_flags_network_loads_and_raw_tex(tmp_path):
    (tmp_path / "index.html").write_text('<script src="_static/a.js"></script><a href="https://x.org">read</a>')
    assert remote_loads(tmp_path) == [] and main([str(tmp_path)]) == 0
    (tmp_path / "cdn.html").write_text('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>')
    (tmp_path / "tex.html").write_text('<div class="math notranslate nohighlight">\\[x^2\\]</div>')
    bad = remote_loads(tmp_path)
    assert any("cdn.html" in b for b in bad) and any("LaTeX" in b for b in bad)
    assert main([str(tmp_path)]) == 1
    assert main([str(tmp_path / "missing")]) == 2


# ---- what a reader sees: nan intervals, dict dumps, long floats, tracebacks, cut-off content (book.screens)

import pytest  # noqa: E402

from stsynth_lib.book.screens import browser_findings, check_page_html, find_chromium  # noqa: E402
from stsynth_lib.book.screens import main as screens_main  # noqa: E402


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
        _out("n/a (1 area)\nPSNR 23.100 dB [22.871, 23.402]\nloss 0.1235 after 1.5e-05 s"),  # 0.123456: too long
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


def _data_png(width: int, height: int = 20) -> str:
    """A grey PNG ``width`` x ``height`` px as a data: URL."""
    import base64
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@pytest.mark.skipif(find_chromium() is None, reason="Chromium not installed (apt-get install chromium)")
def test_browser_pass_flags_cut_off_tables_and_writes_screenshots(tmp_path):
    wide = "<table><tr>" + "".join(f"<td>column_{i}_with_a_long_name</td>" for i in range(12)) + "</tr></table>"
    (tmp_path / "index.html").write_text(
        "<html><body><main style='width:600px'>"
        f"<div id='clipped' style='overflow:hidden'>{wide}</div>"
        f"<div id='scrolls' style='overflow-x:auto'>{wide.replace('<table>', '<table id=hidden>')}</div>"
        "<div class='cell_output'><div style='overflow-x:auto'>" + wide + "</div></div>"
        "<div style='overflow-x:auto'><table id='narrow'><tr><td>fits</td></tr></table></div>"
        "<div id='wide' style='width:900px'>a box wider than the column</div>"
        f"<img id='big' src='{_data_png(1200)}' style='max-width:100%'><img id='fits' src='{_data_png(500)}'>"
        "</main></body></html>"
    )
    findings, shots = browser_findings(tmp_path, tmp_path / "out", find_chromium(), width=800,
                                       pages=[tmp_path / "index.html"])
    assert [f.kind for f in findings] == ["cut off", "sticks out", "figure scaled down", "behind a scrollbar"], findings
    assert "div#clipped" in findings[0].snippet and "div#wide" in findings[1].snippet
    # a 1200-px figure in a 600-px column is shown at half size; a 500-px one at its own size is not flagged
    assert "img#big" in findings[2].snippet and "1200 px wide, shown at 600 px (50%)" in findings[2].snippet
    # a page table that needs a sideways scroll is flagged; a cell's output table and a table that fits are not
    assert "table#hidden" in findings[3].snippet and "need a sideways scroll" in findings[3].snippet
    assert shots == [tmp_path / "out" / "index.png"] and shots[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- issue 35: long floats (> 4 significant decimals), constant image panels, missing files, contradicted verdicts

import struct  # noqa: E402
import zlib  # noqa: E402

from stsynth_lib.book.content import constant_panels, missing_links, parse_verdict_sentences, read_png  # noqa: E402
from stsynth_lib.book.screens import file_findings  # noqa: E402
from stsynth_lib.verdict import verdict_sentence  # noqa: E402


def _png(rows: list[bytes], width: int, colour_type: int = 2, filters=(0,), palette: bytes | None = None) -> bytes:
    """A PNG of 8-bit ``rows`` (RGB by default), each row filtered with the next of ``filters`` (0-4)."""
    bpp = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    raw, prev = bytearray(), bytes(len(rows[0]))
    for y, row in enumerate(rows):
        ft = filters[y % len(filters)]
        out = bytearray()
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = [0, a, b, (a + b) // 2, a if pa <= pb and pa <= pc else b if pb <= pc else c][ft]
            out.append((x - pred) & 255)
        raw += bytes([ft]) + out
        prev = row

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    head = struct.pack(">IIBBBBB", width, len(rows), 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + (chunk(b"PLTE", palette) if palette else b"")
            + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b""))


def _figure(width=120, height=60, black_panel=True, texture=True) -> list[bytes]:
    """A white figure with two 40 x 40 px panels at x 10-50 and 70-110 (y 10-50): the left one textured (or
    black), the right one textured."""
    rows = []
    for y in range(height):
        row = bytearray(b"\xff" * 3 * width)
        if 10 <= y < 50:
            for x in range(10, 50):
                v = 0 if black_panel else (x * 7 + y * 13) % 200
                row[3 * x : 3 * x + 3] = bytes([v, v, v])
            for x in range(70, 110):
                v = (x * 5 + y * 3) % 250 if texture else 90
                row[3 * x : 3 * x + 3] = bytes([v, 40, 200 - v // 2])
        rows.append(bytes(row))
    return rows


def test_png_decoder_undoes_every_filter():
    rows = [bytes((x * 37 + y * 11 + (x * y) % 7) % 256 for x in range(3 * 20)) for y in range(9)]
    for filters in [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)]:
        w, h, bpp, got, pal = read_png(_png(rows, 20, filters=filters))
        assert (w, h, bpp, pal) == (20, 9, 3, None) and got == rows, filters
    gray = [bytes([y * 10] * 5) for y in range(4)]
    assert read_png(_png(gray, 5, colour_type=0, filters=(4,)))[3] == gray


def test_constant_panels_flags_a_black_panel_but_not_white_margins_or_texture():
    clean = _figure(black_panel=False)
    assert constant_panels(120, 60, 3, clean) == []
    found = constant_panels(120, 60, 3, _figure())
    assert len(found) == 1 and "40×40 px panel of one colour (black) at x 10–50, y 10–50" in found[0]
    assert "whole" in constant_panels(8, 8, 3, [b"\x00" * 24] * 8)[0]
    # a flat-coloured (non-black) panel is constant too; a palette image reports the palette colour
    assert len(constant_panels(120, 60, 3, _figure(black_panel=False, texture=False))) == 1
    pal = [bytes([0] * 30 if 5 <= y < 25 else [1] * 30) for y in range(30)]
    for r in range(5, 25):
        pal[r] = bytes([1] * 5 + [0] * 20 + [1] * 5)
    assert "(#123456)" in constant_panels(30, 30, 1, pal, palette=[(0x12, 0x34, 0x56), (255, 255, 255)])[0]


def test_constant_panels_pass_bars_and_histograms():
    """A thin bar and a histogram-like staircase (bins of one colour, not closed on top) are not panels."""
    w, h = 200, 100
    rows = []
    for y in range(h):
        row = bytearray(b"\xff" * 3 * w)
        for x in range(20, 180):  # bins rising to the right: top edge at y = 90 - (x - 20) // 2
            if y >= 90 - (x - 20) // 2 and y < 95:
                row[3 * x : 3 * x + 3] = b"\x1f\x77\xb4"
        rows.append(bytes(row))
    assert constant_panels(w, h, 3, rows) == []


def test_file_findings_name_page_image_and_missing_links(tmp_path):
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "ok.png").write_bytes(_png(_figure(black_panel=False), 120))
    (tmp_path / "_images" / "black.png").write_bytes(_png(_figure(), 120, filters=(4, 2, 1)))
    (tmp_path / "index.html").write_text("<html><body><p>home</p></body></html>")
    (tmp_path / "ch").mkdir()
    (tmp_path / "ch" / "six.html").write_text(
        '<html><body><h2>Galleries</h2><img src="../_images/ok.png"><img src="../_images/black.png">'
        '<a href="../index.html#top">home</a><a href="gone.html">gone</a><img src="../_images/nope.png">'
        '<a href="https://example.org/x.html">far</a><a href="#here">here</a>'
        '<div class="cell_input"><pre>&lt;a href="code.html"&gt;</pre></div></body></html>')
    found = file_findings(tmp_path)
    assert sorted(f.kind for f in found) == ["constant image", "missing file", "missing file"], found
    img = next(f for f in found if f.kind == "constant image")
    assert img.page == "ch/six.html" and "image 2 (black.png" in img.snippet and "'Galleries'" in img.snippet
    assert {f.snippet.split('"')[1] for f in found if f.kind == "missing file"} == {"gone.html", "../_images/nope.png"}


def test_missing_links_check_launch_links_into_the_repository(tmp_path):
    (tmp_path / "book" / "reference" / "p").mkdir(parents=True)
    (tmp_path / "book" / "reference" / "p" / "01.ipynb").write_text("{}")
    html = tmp_path / "html"
    html.mkdir()
    base = "https://colab.research.google.com/github/o/r/blob/main/book/"
    page = f'<a href="{base}reference/p/01.ipynb">ok</a><a href="{base}p/01.ipynb">launch</a>' \
           '<a href="https://github.com/other/repo/blob/main/x.py">other repo</a>'
    found = missing_links(page, html / "p.html", html, (tmp_path, "o/r"))
    assert len(found) == 1 and "book/p/01.ipynb is not in the repository" in found[0]


def test_long_floats_over_4_significant_decimals():
    assert _kinds(_out("loss 0.123456")) == {"long float"}
    assert _kinds(_out("PSNR 23.12345 dB")) == {"long float"}
    assert _kinds(_table("weights", "[0.53642, 0.12699]")) == {"long float"}
    assert _kinds(_out("lr 0.0001801, PSNR 23.1234, SSIM 0.8123, 1.5e-05 s, version 1.2.12345")) == set()


ROWS = [  # model − seasonal, paired over 7 areas
    {"model": "pix2pix", "metric": "psnr", "ci_lo": -0.83, "ci_hi": 1.17, "n_areas": 7, "unit": "area"},
    {"model": "pix2pix", "metric": "ssim", "ci_lo": 0.0065, "ci_hi": 0.0169, "n_areas": 7, "unit": "area"},
    {"model": "cn [tiny, from scratch (x); y]", "metric": "psnr", "ci_lo": -3.9, "ci_hi": -2.1, "n_areas": 7},
]


def _bar_table(psnr_cell: str, ssim_cell: str) -> str:
    return ("<p>Model − <code>seasonal</code> on the same test pairs:</p><table><thead><tr><th>model</th>"
            "<th>Δ PSNR dB (higher is better)</th><th>Δ SSIM (higher is better)</th></tr></thead><tbody>"
            f"<tr><td>pix2pix</td><td>{psnr_cell}</td><td>{ssim_cell}</td></tr></tbody></table>")


def test_verdict_sentences_parse_back_to_their_claims():
    s = verdict_sentence(ROWS, "seasonal", baseline_text="the strongest no-learning baseline (`seasonal`, chosen on "
                         "the validation split)")
    claims = {(c["model"], c["metric"], c["verdict"]) for c in parse_verdict_sentences(s.replace("`", ""))}
    assert claims == {("pix2pix", "psnr", "no clear difference"), ("pix2pix", "ssim", "better"),
                      ("cn [tiny, from scratch (x); y]", "psnr", "worse")}


def test_verdict_check_flags_a_claim_or_mark_its_interval_does_not_support():
    good = verdict_sentence(ROWS, "seasonal")
    ok = f"<p>{good}</p>" + _bar_table("+0.34 [-0.83, +1.17]", "+0.0110 [+0.0065, +0.0169] ✔")
    assert _kinds(ok) == set()
    # the sentence says better on PSNR; the table's interval contains zero
    bad_rows = [dict(ROWS[0], ci_lo=0.1), ROWS[1]]
    found = check_page_html(f"<p>{verdict_sentence(bad_rows, 'seasonal')}</p>"
                            + _bar_table("+0.34 [-0.83, +1.17]", "+0.0110 [+0.0065, +0.0169] ✔"), "intro.html")
    assert [f.kind for f in found] == ["verdict contradicted"] and "better on PSNR" in found[0].snippet
    assert "[-0.83, +1.17]" in found[0].snippet and found[0].page == "intro.html"
    # a ✔ on an interval containing zero, a missing ✔ on a clear one
    assert _kinds(_bar_table("+0.34 [-0.83, +1.17] ✔", "+0.0110 [+0.0065, +0.0169] ✔")) == {"verdict contradicted"}
    assert _kinds(_bar_table("+0.34 [-0.83, +1.17]", "+0.0110 [+0.0065, +0.0169]")) == set()  # no marks: no claim
    assert _kinds(_bar_table("-0.34 [-0.83, -0.17]", "+0.0110 [+0.0065, +0.0169] ✔")) == {"verdict contradicted"}
    # the long form of chapter 6: a verdict column in words
    long = ('<table><thead><tr><th></th><th>model</th><th>metric</th><th>model − persistence</th>'
            '<th>95% interval</th><th>verdict</th></tr></thead><tbody>'
            '<tr><th>0</th><td>pix2pix</td><td>L1 ([0,1] units) ↓</td><td>-0.0102</td><td>[-0.0189, +0.0002]</td>'
            '<td>{}</td></tr></tbody></table>')
    assert _kinds(long.format("no clear difference")) == set()
    assert _kinds(long.format("better")) == {"verdict contradicted"}


def test_static_checks_flag_pandas_cuts_and_long_floats_in_row_names():
    """A frame pandas cut (its '72 rows × 6 columns' footer) hides rows a reader needs; a float index level printed
    at full precision (an area's persistence PSNR 27.427331) is a long float like any cell."""
    cut = ('<div class="cell_output docutils container"><div class="output text_html"><table class="dataframe">'
           "<tbody><tr><th>pix2pix</th><td>1.0</td></tr><tr><th>...</th><td>...</td></tr></tbody></table>"
           "<p>72 rows × 6 columns</p></div></div>")
    assert _kinds(cut) == {"truncated table"}
    named = ('<div class="cell_output docutils container"><div class="output text_html"><table class="dataframe">'
             "<thead><tr><th></th><th>gain</th></tr></thead><tbody><tr><th>27.427331</th><td>-4.14</td></tr>"
             "</tbody></table></div></div>")
    assert _kinds(named) == {"long float"}
    assert _kinds(named.replace("27.427331", "27.43")) == set()
