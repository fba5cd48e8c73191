"""The FUSE layer: the only package that imports pyfuse3."""
