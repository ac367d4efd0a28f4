"""openos365: turn OCI container images into operating-system images."""

__version__ = "0.1.0"
