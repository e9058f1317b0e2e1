"""docs/check_site.py, the check ``make docs`` runs on the built site, on tiny HTML strings."""

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "docs" / "check_site.py"
_spec = importlib.util.spec_from_file_location("check_site", _PATH)
check_site = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("check_site", check_site)  # dataclasses look their module up
_spec.loader.exec_module(check_site)


def _latex(html):
    return check_site.raw_latex(check_site.parse_page(html))


@pytest.mark.parametrize(
    "html",
    [
        r"<p>the radius \frac{1}{n+1} of</p>",
        r"<p>coverage \ge 1 - \delta</p>",
        r"<p>$$ q^+ = s_{(k)} $$</p>",
        r"<p>a bound \(LB\) here</p>",
        r"<li>see :math:`\delta` below</li>",
        r"<p><em>alpha \le 60</em></p>",
    ],
)
def test_raw_latex_in_prose_is_found(html):
    assert _latex(html)


@pytest.mark.parametrize(
    "html",
    [
        r'<span class="math notranslate nohighlight">\(\frac{1}{n+1}\)</span>',
        r'<div class="math notranslate nohighlight">\[ s_i = \max_j \]</div>',
        r"<pre>print('\frac')  # a\nb</pre>",
        r"<p>in code <code>r'\le'</code> only</p>",
        r'<div class="highlight"><span>\delta</span></div>',
        r"<script>MathJax = {tex: {inlineMath: [['\\(', '\\)']]}}</script>",
        "<p>plain prose, 5 $ a dollar and a newline \\n</p>",
    ],
)
def test_math_code_and_scripts_are_not_raw_latex(html):
    assert _latex(html) == []


def test_text_after_a_math_element_is_checked_again():
    html = r'<p><span class="math">\(x\)</span> then \frac{a}{b}</p>'
    assert len(_latex(html)) == 1


def _problems(pages, files=()):
    parsed = {name: check_site.parse_page(html) for name, html in pages.items()}

    def exists(target):
        return target in parsed or target in files

    problems = []
    for name, page in parsed.items():
        problems += check_site.link_problems(name, page, parsed, exists)
    return problems


def test_links_and_anchors_that_resolve_pass():
    pages = {
        "index.html": (
            '<a href="api.html#skddh.X">x</a><a href="#top">t</a><a href="sub/">s</a>'
            '<a href="https://example.org/missing">external</a><a href="#">top</a>'
            '<img src="_images/a.png"><link rel="stylesheet" href="_static/a.css">'
            '<h1 id="top">T</h1>'
        ),
        "api.html": '<dt id="skddh.X">X</dt><a href="index.html">home</a>',
        "sub/index.html": '<a href="../api.html#skddh.X">x</a>',
    }
    assert _problems(pages, files={"_images/a.png", "_static/a.css"}) == []


def test_broken_links_anchors_and_network_resources_are_found():
    pages = {
        "index.html": (
            '<a href="missing.html">a</a><a href="api.html#nope">b</a><a href="#absent">c</a>'
            '<img src="_images/gone.png"><script src="https://cdn.example/mathjax.js"></script>'
            '<a href="../outside.html">d</a>'
        ),
        "api.html": '<dt id="skddh.X">X</dt>',
    }
    problems = _problems(pages)
    assert len(problems) == 6, problems
    joined = "\n".join(problems)
    for piece in ("missing.html", "'nope'", "'absent'", "gone.png", "network", "outside"):
        assert piece in joined


def test_thumbnails_are_found_and_placeholders_recognised(tmp_path):
    from PIL import Image

    page = check_site.parse_page(
        '<div class="sphx-glr-thumbcontainer"><img alt="" src="../_images/t.png">'
        '<p>Title</p></div><img src="other.png">'
    )
    assert page.thumbnails == ["../_images/t.png"]
    _import_sphinx_gallery()
    size = (40, 30)
    placeholders = check_site.placeholder_images(size)
    assert set(placeholders) == {"no_image.png", "broken_example.png"}
    # a copy of the scaled placeholder is one; a real figure is not
    static = _import_sphinx_gallery() / "_static"
    from sphinx_gallery.utils import scale_image

    copy = tmp_path / "copy.png"
    scale_image(static / "no_image.png", copy, *size)
    assert check_site.is_placeholder(copy, placeholders) == "no_image.png"
    figure = tmp_path / "figure.png"
    Image.new("RGBA", size, (30, 90, 200, 255)).save(figure)
    assert check_site.is_placeholder(figure, placeholders) is None


def _import_sphinx_gallery():
    sphinx_gallery = pytest.importorskip("sphinx_gallery")
    return Path(sphinx_gallery.__file__).parent


def test_check_site_without_a_build_says_so(tmp_path):
    assert "no index.html" in check_site.check_site(tmp_path)[0]
