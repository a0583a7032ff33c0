"""Known-vulnerability scanning: what a guest has installed, an offline OSV database, exact
matching under each distribution's own version order, the report and the SBOM.

Pure library code: no worker, transport or libguestfs imports.  The handler in
:mod:`guestkit_worker.handlers` joins it to the probe that reads the guest.
"""
