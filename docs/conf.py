"""Sphinx configuration: numpydoc API pages, a sphinx-gallery of executed tutorials."""

import os
import warnings

import matplotlib

import skddh

matplotlib.use("Agg")
os.environ.setdefault("OMP_NUM_THREADS", "2")

project = "skddh"
author = "the skddh developers"
copyright = "2026, the skddh developers"
release = skddh.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Cross-references in "Parameters" types stay plain text: many are prose ("float or dict").
numpydoc_xref_param_type = False
templates_path = ["_templates"]
exclude_patterns = ["_build", "generated/*.examples", "examples"]

intersphinx_mapping = {}  # no network at build time: links stay plain text

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "reset_modules": ("matplotlib",),
}

html_theme = "pydata_sphinx_theme"
html_title = "skddh"
html_theme_options = {"navigation_with_keys": False}

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


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)
