"""Sphinx configuration: the API reference from the docstrings, the guides from Markdown.

Build with ``make -C docs html`` (warnings are errors, as in CI).
"""

from __future__ import annotations

from importlib.metadata import version as _version

project = "zodbsession"
author = "the zodbsession authors"
release = _version("zodbsession")
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "api-fragments"]
myst_heading_anchors = 3
# The guides link to files of the repository (../src/..., ../examples/...) that are
# not pages of the site; they stay links to the source tree.
suppress_warnings = ["myst.xref_missing"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
nitpicky = False

html_theme = "alabaster"
html_static_path: list[str] = []
