"""`Document` writes the same blocks as Markdown and as self-contained HTML."""

import base64
import re
import struct

import pytest
from matplotlib.figure import Figure

from pipeline.report.document import Document

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def doc():
    doc = Document("Results <draft> & notes")
    doc.paragraph("Run `a<b` for **5 & 6** now.")
    doc.heading("Section & more")
    doc.heading("Details", level=3)
    doc.bullets(item for item in ("first `x`", "second <y>"))  # any iterable
    doc.table(("band", "accuracy"), [("narrow", "9.80%"), ["wide <10>", 0.5]])
    figure = Figure(figsize=(1.5, 1))
    figure.subplots().plot([1, 2], [3, 4])
    doc.figure("plot.png", figure, 'Accuracy "by" epoch <b> & `loss`')
    return doc


def test_markdown_is_the_text_as_given_with_pipe_tables(doc):
    assert doc.to_markdown() == "\n".join([
        "# Results <draft> & notes",
        "",
        "Run `a<b` for **5 & 6** now.",
        "",
        "## Section & more",
        "",
        "### Details",
        "",
        "- first `x`",
        "- second <y>",
        "",
        "| band | accuracy |",
        "| --- | --- |",
        "| narrow | 9.80% |",
        "| wide <10> | 0.5 |",
        "",
        '![Accuracy "by" epoch <b> & `loss`](plot.png)',
        "",
        '*Accuracy "by" epoch <b> & `loss`*',
        "",
    ])


def test_html_escapes_text_and_renders_code_and_bold(doc):
    page = doc.to_html()
    assert page.startswith("<!DOCTYPE html>\n<html>")
    assert page.endswith("</body></html>\n")
    assert "<title>Results &lt;draft&gt; &amp; notes</title>" in page
    assert "<h1>Results &lt;draft&gt; &amp; notes</h1>" in page
    assert "<p>Run <code>a&lt;b</code> for <strong>5 &amp; 6</strong> now.</p>" in page
    assert "<h2>Section &amp; more</h2>" in page and "<h3>Details</h3>" in page
    assert "<ul><li>first <code>x</code></li><li>second &lt;y&gt;</li></ul>" in page
    assert ("<table><thead><tr><th>band</th><th>accuracy</th></tr></thead><tbody>"
            "<tr><td>narrow</td><td>9.80%</td></tr>"
            "<tr><td>wide &lt;10&gt;</td><td>0.5</td></tr></tbody></table>") in page
    assert "<draft>" not in page and "<y>" not in page and "<b>" not in page


def test_figures_are_png_files_in_markdown_and_embedded_in_html(doc):
    (image,) = doc.images
    assert image.filename == "plot.png"
    assert image.png.startswith(PNG_SIGNATURE)
    # Rendered at 100 dpi: a 1.5 x 1 inch figure is 150 x 100 pixels (the IHDR chunk).
    assert struct.unpack(">II", image.png[16:24]) == (150, 100)
    assert "](plot.png)" in doc.to_markdown()

    page = doc.to_html()
    (figure,) = re.findall(r"<figure>.*?</figure>", page)
    (data,) = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', figure)
    assert base64.b64decode(data) == image.png
    assert 'alt="Accuracy &quot;by&quot; epoch &lt;b&gt; &amp; `loss`"' in figure
    assert ("<figcaption>Accuracy &quot;by&quot; epoch &lt;b&gt; &amp; <code>loss</code>"
            "</figcaption>") in figure
    assert "plot.png" not in page  # self-contained: nothing to fetch beside it


def test_an_empty_document_is_its_title():
    doc = Document("Only a title")
    assert doc.to_markdown() == "# Only a title\n"
    assert doc.images == []
    assert "<h1>Only a title</h1>\n</body></html>" in doc.to_html()
