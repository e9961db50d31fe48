"""fastlkm: fast symbol resolution for Linux loadable kernel modules."""

__version__ = "0.1.0"
