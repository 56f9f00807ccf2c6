"""unifork: a Y-shaped transformer for unified image understanding and generation (UniFork, arXiv 2506.17202)."""

__version__ = "0.1.0"
