"""Sphinx configuration: numpydoc API pages, a sphinx-gallery of executed tutorials.

The site works offline: MathJax is served from ``_static`` (the ``sphinx-mathjax-offline``
package bundles it), and intersphinx reads only inventories that need no network unless asked
(see ``intersphinx_mapping`` below).
"""

import argparse
import os
import re
import warnings
from pathlib import Path

import matplotlib

import skddh

matplotlib.use("Agg")
os.environ.setdefault("OMP_NUM_THREADS", "2")

project = "skddh"
author = "the skddh developers"
copyright = "2026, the skddh developers"
release = skddh.__version__
version = release
DOCS = Path(__file__).resolve().parent

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    # MathJax 3 copied into _static/mathjax: formulas render with no network (hospital
    # networks are often closed); the package sets mathjax_path, set here too to be explicit.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
mathjax_path = "mathjax/tex-chtml.js"

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Cross-references in "Parameters" types stay plain text: many are prose ("float or dict").
numpydoc_xref_param_type = False
templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "generated/*.examples",
    "examples",
    "snippets",
    "sg_execution_times.rst",
    "auto_examples/sg_execution_times.rst",
]

# Intersphinx, offline first. A project's inventory is read from docs/_intersphinx/<name>.inv
# when that file exists (``make docs-inventories`` fetches them where there is a network);
# otherwise only with SKDDH_DOCS_INTERSPHINX=1 from the network. Without either, references
# to these projects stay plain text and the build neither reaches out nor warns (warnings are
# errors here).
INTERSPHINX_URLS = {
    "python": "https://docs.python.org/3",
    "numpy": "https://numpy.org/doc/stable",
    "scipy": "https://docs.scipy.org/doc/scipy",
    "pandas": "https://pandas.pydata.org/docs",
    "sklearn": "https://scikit-learn.org/stable",
    "torch": "https://docs.pytorch.org/docs/stable",
}
_REMOTE_INVENTORIES = os.environ.get("SKDDH_DOCS_INTERSPHINX", "") == "1"
intersphinx_mapping = {}
for _name, _url in INTERSPHINX_URLS.items():
    _local = DOCS / "_intersphinx" / f"{_name}.inv"
    if _local.is_file():
        intersphinx_mapping[_name] = (_url, str(_local))
    elif _REMOTE_INVENTORIES:
        intersphinx_mapping[_name] = (_url, None)
intersphinx_timeout = 10

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "reset_modules": ("matplotlib",),
    # "Examples using X" on every API page: the autosummary templates include
    # generated/<fullname>.examples, written here.
    "backreferences_dir": "generated",
    "doc_module": ("skddh",),
    "reference_url": {"skddh": None},
    # The computation-times page loads jQuery and DataTables from a CDN: not offline.
    "write_computation_times": False,
}

html_theme = "pydata_sphinx_theme"
html_title = f"skddh {release}"  # the version on every page, in the navbar
html_static_path = ["_static"]
html_css_files = ["skddh.css"]
html_theme_options = {"navigation_with_keys": False, "header_links_before_dropdown": 5}
# Pages without sub-pages get no (empty) left sidebar.
html_sidebars = {
    page: []
    for page in (
        "index",
        "install",
        "getting_started",
        "user_guide",
        "cli",
        "data_format",
        "glossary",
        "changelog",
        "citing",
    )
}

# Warnings are errors in `make docs`; these come from our dependencies, not our docs.
warnings.filterwarnings("ignore", category=UserWarning, message=".*delta is too small.*")
warnings.filterwarnings("ignore", category=FutureWarning)


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Document our own methods only: scikit-learn's (get_params, set_*_request, score of a
    mixin, ...) are documented by scikit-learn and their docstrings link into its docs."""
    if what != "class":
        return skip
    module = getattr(obj, "__module__", None) or getattr(
        getattr(obj, "fget", None), "__module__", ""
    )
    if name.startswith("set_") and name.endswith("_request"):
        return True
    if module and not module.startswith("skddh"):
        return True
    return skip


def _cli_help(parser: argparse.ArgumentParser, width: int = 90) -> list[tuple[str, str]]:
    """``(command, --help text)`` for the ``skddh`` parser and each of its subcommands."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps to the terminal: fix the width
    try:
        pages = [(parser.prog, parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    pages.append((f"{parser.prog} {name}", sub.format_help()))
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return pages


def write_cli_reference(app=None) -> Path:
    """Write generated/cli_help.txt, included by cli.rst: the CLI reference is the parser's
    own ``--help``, so it cannot drift from :func:`skddh.cli.build_parser`."""
    from skddh.cli import build_parser

    lines = []
    for command, text in _cli_help(build_parser()):
        anchor = command.replace(" ", "-")
        lines += [f".. _cli-{anchor}:", "", f"``{command}``", "-" * (len(command) + 4), ""]
        lines += [".. code-block:: text", ""]
        lines += [f"   {line}".rstrip() for line in text.rstrip().splitlines()]
        lines.append("")
    out = DOCS / "generated" / "cli_help.txt"
    out.parent.mkdir(exist_ok=True)
    text = "\n".join(lines)
    if not out.is_file() or out.read_text() != text:  # unchanged: no rebuild of cli.rst
        out.write_text(text)
    return out


_VIEWCODE_BACKLINK = re.compile(r'href="((?:\.\./)*generated/([^"#/]+)\.html)#([^"]*)"')


def _viewcode_anchor(match) -> str:
    """The backlink to ``generated/<public name>.html`` with that page's own anchor."""
    url, page, anchor = match.groups()
    module, _, top = page.rpartition(".")
    # the anchor ends in the object's qualified name in its module: top[.method]
    found = re.search(rf"(?:^|\.)({re.escape(top)}(?:\.[^.]+)*)$", anchor)
    if found and module:
        anchor = f"{module}.{found.group(1)}"
    return f'href="{url}#{anchor}"'


def _fix_viewcode_backlinks(app, pagename, templatename, context, doctree):
    """Point the [docs] links of the source pages at the object's own anchor.

    viewcode builds every backlink of a module from the public module of the first object it
    saw documented from it, so ``skddh.metrics._policy`` (documented as
    ``skddh.make_policy_scorer`` and ``skddh.metrics.coverage``) linked ``#skddh.coverage``.
    Each API page is named after its object's public name: the anchor follows from it.
    """
    if pagename.startswith("_modules/") and "body" in context:
        context["body"] = _VIEWCODE_BACKLINK.sub(_viewcode_anchor, context["body"])


def setup(app):
    app.connect("html-page-context", _fix_viewcode_backlinks)
    app.connect("autodoc-skip-member", _skip_foreign_members)
    app.connect("builder-inited", write_cli_reference)
