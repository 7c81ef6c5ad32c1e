"""Sphinx configuration for the cpembed documentation."""

from importlib.metadata import version as _version

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
typehints_document_rtype = True
always_document_param_types = False

myst_enable_extensions = ["dollarmath", "colon_fence"]
# Tutorials are executed by the test suite (tests/test_tutorials.py); the docs render their stored outputs.
nb_execution_mode = "off"

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "pandas": ("https://pandas.pydata.org/docs/", None),
}
# The build machines have no network access: intersphinx failures must not break a warnings-as-errors build.
suppress_warnings = ["intersphinx"]
intersphinx_timeout = 1

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "sphinx_book_theme"
html_title = "cpembed"
