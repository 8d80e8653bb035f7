"""pds: a filesystem-backed atproto Personal Data Server."""

__version__ = "0.1.0"
