"""guestkit-worker: runs guestkit job protocol v1.0 jobs on VM disk images, observably."""

__version__ = "0.1.0"

PROTOCOL_VERSION = "1.0"
