"""Sphinx configuration of calibkit's documentation (Sphinx + numpydoc; build: see the README).

    python -m sphinx -W --keep-going -b html docs build/docs
"""

import calibkit
from docutils import nodes
from sphinx.util.docutils import SphinxDirective

project = "calibkit"
author = "calibkit developers"
copyright = "calibkit developers, MIT licence"
release = calibkit.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax", "sphinx.ext.viewcode", "numpydoc"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []
html_title = f"calibkit {release}"

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types
numpydoc_show_class_members = False  # autodoc lists the members; no autosummary tables
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
suppress_warnings = ["ref.python"]  # a name exported twice (calibkit.X and calibkit.module.X) is not ambiguous


class CommandHelp(SphinxDirective):
    """``.. command-help:: SUBCOMMAND``: the ``--help`` text of a calibkit command, from its argparse parser,
    so the CLI page cannot drift from the code (``.. command-help::`` with no argument: the top-level help)."""

    optional_arguments = 1

    def run(self):
        import argparse
        import os

        from calibkit.cli import build_parser

        os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width: fix it so the page is stable
        parser = build_parser()
        if self.arguments:
            subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = subparsers.choices[self.arguments[0]]
        text = parser.format_help()
        return [nodes.literal_block(text, text, language="text")]


def _escape_bars(app, what, name, obj, options, lines):
    """The docstrings write absolute values as plain text (``|acc - conf|``), which reStructuredText would read
    as substitution references: escape every ``|`` outside inline literals, math and literal blocks."""
    literal_indent = None
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if not line.strip() or indent > literal_indent:
                continue
            literal_indent = None
        if line.strip().endswith("::"):  # a literal block or a directive (.. math::) follows: leave it as it is
            literal_indent = indent
        elif "|" in line:
            parts = line.split("``")
            lines[i] = "``".join(p.replace("|", "\\|") if k % 2 == 0 else p for k, p in enumerate(parts))


def setup(app):
    app.add_directive("command-help", CommandHelp)
    app.connect("autodoc-process-docstring", _escape_bars, priority=900)  # after numpydoc's rewriting
