"""Engines: programs the handlers run in child processes (shipped as package data).

``guestfs_probe.py`` is a standalone script (stdlib + the ``guestfs`` binding only) run by the
system python, which has the libguestfs binding; see :func:`probe_script`.  What it reads for
each report section is ``guestfs_sections.py``, which the script imports from its own
directory (stdlib only too).
"""

import os


def probe_script():
    """Absolute path of the libguestfs inspection probe script."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "guestfs_probe.py")
