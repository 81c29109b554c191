"""mohlog: intelligent distributed logging."""

__version__ = "0.1.0"
