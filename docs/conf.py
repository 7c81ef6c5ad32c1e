"""Sphinx configuration for the cpembed documentation."""

import inspect
import os
import shutil
import sys
from importlib.metadata import version as _version
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer

project = "cpembed"
author = "cpembed developers"
copyright = "2026, cpembed developers"
release = _version("cpembed")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
]

autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "inherited-members": False}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = True
# Attributes sections become :ivar: fields, so dataclass fields are not described twice (once by autodoc).
napoleon_use_ivar = True
typehints_document_rtype = True
# No ":rtype: None" for functions that return nothing (it also lands inside a Notes section, breaking the markup).
typehints_document_rtype_none = False
always_document_param_types = False

myst_enable_extensions = ["dollarmath", "colon_fence"]
# Tutorials are executed by the test suite (tests/test_tutorials.py); the docs render their stored outputs.
nb_execution_mode = "off"

_INTERSPHINX = {
    "python": ("https://docs.python.org/3", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "pandas": ("https://pandas.pydata.org/docs/", None),
}


# Build machines may have no network access, and Sphinx reports unreachable inventories with an untyped warning that
# suppress_warnings cannot silence, which would fail the warnings-as-errors build. Links to other projects' docs
# are therefore opt-in: CPEMBED_DOCS_INTERSPHINX=1 make docs.
intersphinx_mapping = _INTERSPHINX if os.environ.get("CPEMBED_DOCS_INTERSPHINX") == "1" else {}
intersphinx_timeout = 2

# The tutorial notebooks live in tutorials/ at the top of the repository, outside this source folder, which Sphinx
# cannot read from. They are copied into the git-ignored docs/generated/tutorials/ at every build (docs/tutorials.md
# links to the copies), so `sphinx-build docs ...` alone builds them and the repository keeps one copy.
_TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
_TUTORIAL_COPIES = Path(__file__).resolve().parent / "generated" / "tutorials"
shutil.rmtree(_TUTORIAL_COPIES, ignore_errors=True)
_TUTORIAL_COPIES.mkdir(parents=True)
for _notebook in sorted(_TUTORIALS.glob("*.ipynb")):
    shutil.copy2(_notebook, _TUTORIAL_COPIES / _notebook.name)

# ".rst" first: autosummary writes its stub pages with the first suffix it takes for reStructuredText.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
# _static/ holds files that pages include (benchmark results), not pages of their own.
exclude_patterns = ["_build", "_static", "**.ipynb_checkpoints"]
html_theme = "sphinx_book_theme"
html_title = "cpembed"


def _defining_module_comment(name: str, obj: object) -> list[str]:
    """The ``#:`` comment above a constant in the private module that defines it (``cpembed.io._images``)."""
    package, attribute = name.rsplit(".", 1)
    for module_name, module in sorted(sys.modules.items()):
        if module_name.startswith(f"{package}._") and getattr(module, attribute, None) is obj:
            comment = ModuleAnalyzer.for_module(module_name).find_attr_docs().get(("", attribute))
            if comment:
                return list(comment)
    return []


def _document_constants(app, what, name, obj, options, lines) -> None:
    """Give re-exported constants their own ``#:`` comment instead of the docstring of their type (``dict``)."""
    type_doc = inspect.cleandoc(type(obj).__doc__ or "").splitlines()
    if what == "data" and lines and type_doc and lines[0].strip() == type_doc[0].strip():
        lines[:] = _defining_module_comment(name, obj)


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _document_constants)
