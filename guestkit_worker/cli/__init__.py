"""The command line: the parser and dispatch (:mod:`.main`), options, one module per
command, exit codes, logging set-up and signal handling.

``entry_point`` (the console script) and ``get_parser`` (argparse-manpage) are importable
from here."""

from .main import entry_point, get_parser

__all__ = ["entry_point", "get_parser"]
