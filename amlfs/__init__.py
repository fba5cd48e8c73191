"""amlfs: pinned, versioned datasets from object storage under a local path."""

__version__ = "0.1.0"
