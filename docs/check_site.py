"""Check the built HTML site, as a reader offline would see it; ``make docs`` runs it.

Fails (exit status 1, one line per problem) on:

- a local link, image, script or stylesheet whose file is missing, or a ``#anchor`` that the
  target page does not define;
- a script, stylesheet or image loaded from the network (the site must work offline; links
  *to* other sites are fine);
- a gallery thumbnail that is one of sphinx-gallery's placeholders (``no_image.png``,
  ``broken_example.png``): a tutorial without a figure, or one that failed;
- raw LaTeX in the text of a page (``\\frac``, ``\\le``, ``$$``, ``\\(``, a ``:math:`` role
  left as text) outside the elements MathJax renders and outside code.

Usage: ``python docs/check_site.py [docs/_build/html]``.
"""

from __future__ import annotations

import posixpath
import re
import sys
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: Elements whose text is not prose: code, and what MathJax typesets.
_SKIP_TAGS = {"script", "style", "pre", "code", "kbd", "samp", "textarea", "math", "svg"}
#: Classes that mark MathJax's input (``span.math``, ``div.math``) or highlighted code.
_SKIP_CLASSES = {"math", "highlight", "MathJax", "mjx-container"}
_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}
#: TeX left as text: a control word (``\frac``, ``\le``), ``\(``, ``\)``, ``\[``, ``\]``,
#: ``\{``, ``\}``, display dollars, or an unprocessed ``:math:`` role.
RAW_LATEX = re.compile(r"\\(?:[A-Za-z]{2,}|[()\[\]{}])|\$\$|:math:`")
_EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")
_THUMB_CLASS = "sphx-glr-thumbcontainer"


@dataclass
class Page:
    """What the checks need from one HTML page."""

    ids: set[str] = field(default_factory=set)
    #: (tag, attribute, url) of every link and loaded resource.
    links: list[tuple[str, str, str]] = field(default_factory=list)
    #: Text outside code and math elements.
    text: list[str] = field(default_factory=list)
    #: ``src`` of the images inside gallery thumbnail containers.
    thumbnails: list[str] = field(default_factory=list)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, skips text, in a thumbnail)

    def _skipping(self) -> bool:
        return bool(self._stack) and self._stack[-1][1]

    def _in_thumb(self) -> bool:
        return bool(self._stack) and self._stack[-1][2]

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key) and (key == "id" or tag == "a"):
                self.page.ids.add(attrs[key])
        classes = set((attrs.get("class") or "").split())
        rel = set((attrs.get("rel") or "").lower().split())
        loads = tag == "link" and rel & {"stylesheet", "icon", "preload"}
        if (tag == "a" or loads) and attrs.get("href") is not None:
            self.page.links.append((tag, "href", attrs["href"]))
        elif tag in ("img", "script", "source", "iframe") and attrs.get("src"):
            self.page.links.append((tag, "src", attrs["src"]))
        if tag == "img" and self._in_thumb() and attrs.get("src"):
            self.page.thumbnails.append(attrs["src"])
        if tag in _VOID:
            return
        skip = self._skipping() or tag in _SKIP_TAGS or bool(classes & _SKIP_CLASSES)
        thumb = self._in_thumb() or _THUMB_CLASS in classes
        self._stack.append((tag, skip, thumb))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in _VOID and self._stack and self._stack[-1][0] == tag:
            self._stack.pop()

    def handle_endtag(self, tag):
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                return

    def handle_data(self, data):
        if not self._skipping() and data.strip():
            self.page.text.append(data)


def parse_page(html: str) -> Page:
    """Ids, links, prose text and thumbnail images of an HTML page."""
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.page


def raw_latex(page: Page) -> list[str]:
    """Snippets of the page's prose that hold TeX MathJax will not render."""
    found = []
    for text in page.text:
        for match in RAW_LATEX.finditer(text):
            start = max(match.start() - 30, 0)
            found.append(" ".join(text[start : match.end() + 30].split()))
    return found


def link_problems(name: str, page: Page, pages: dict[str, Page], exists) -> list[str]:
    """Broken local links and anchors, and resources loaded from the network.

    ``name`` is the page's path relative to the site root (``/``-separated), ``pages`` every
    parsed page by such path, ``exists(path)`` whether a file of the site exists.
    """
    problems = []
    here = posixpath.dirname(name)
    for tag, attr, url in page.links:
        if _EXTERNAL.match(url):
            if tag != "a" and not url.startswith("data:"):
                problems.append(f"{name}: <{tag} {attr}={url!r}> loads from the network")
            continue
        parts = urlsplit(url)
        path, fragment = unquote(parts.path), unquote(parts.fragment)
        if not path:
            target = name
        else:
            target = posixpath.normpath(posixpath.join(here, path))
            if path.endswith("/") or target in ("", "."):
                target = posixpath.join("" if target == "." else target, "index.html")
        if target.startswith("../"):
            problems.append(f"{name}: {url!r} points outside the site")
        elif target in pages:
            if fragment and fragment not in pages[target].ids:
                problems.append(f"{name}: {url!r}: no id {fragment!r} in {target}")
        elif not exists(target):
            problems.append(f"{name}: {url!r}: {target} does not exist")
    return problems


def _pixels(path: Path) -> tuple[tuple[int, int], bytes]:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGBA")
        return img.size, img.tobytes()


def placeholder_images(thumb_size: tuple[int, int]) -> dict[str, bytes]:
    """sphinx-gallery's placeholder thumbnails, scaled as it scales them, by name."""
    from sphinx_gallery.utils import scale_image

    static = Path(__import__("sphinx_gallery").__file__).parent / "_static"
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("no_image.png", "broken_example.png"):
            scaled = Path(tmp) / name
            scale_image(static / name, scaled, *thumb_size)
            out[name] = _pixels(scaled)[1]
    return out


def is_placeholder(image: Path, placeholders: dict[str, bytes]) -> str | None:
    """The placeholder ``image`` is a copy of (its name), or None."""
    pixels = _pixels(image)[1]
    return next((name for name, ref in placeholders.items() if ref == pixels), None)


def check_site(root: Path) -> list[str]:
    """Every problem found in the site built at ``root``."""
    root = Path(root)
    if not (root / "index.html").is_file():
        return [f"{root}: no index.html; build the site first (make docs)"]
    pages = {
        p.relative_to(root).as_posix(): parse_page(p.read_text(encoding="utf-8"))
        for p in sorted(root.rglob("*.html"))
        if not p.relative_to(root).as_posix().startswith("_static/")  # theme templates
    }

    def exists(target: str) -> bool:
        return (root / target).is_file()

    problems = []
    placeholders: dict[tuple[int, int], dict[str, bytes]] = {}
    for name, page in pages.items():
        problems += link_problems(name, page, pages, exists)
        problems += [f"{name}: raw LaTeX in the text: {s!r}" for s in raw_latex(page)]
        for src in page.thumbnails:
            image = root / posixpath.normpath(posixpath.join(posixpath.dirname(name), src))
            if not image.is_file():
                continue  # reported as a broken link
            size = _pixels(image)[0]
            if size not in placeholders:
                placeholders[size] = placeholder_images(size)
            which = is_placeholder(image, placeholders[size])
            if which:
                problems.append(
                    f"{name}: thumbnail {src} is sphinx-gallery's placeholder ({which}): give "
                    "the tutorial a figure or a sphinx_gallery_thumbnail_path"
                )
    return problems


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else Path(__file__).parent / "_build" / "html")
    problems = check_site(root)
    for line in problems:
        print(f"check_site: {line}", file=sys.stderr)
    if problems:
        print(f"check_site: {len(problems)} problem(s) in {root}", file=sys.stderr)
        return 1
    print(f"check_site: {root}: links, anchors, thumbnails and math are fine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
