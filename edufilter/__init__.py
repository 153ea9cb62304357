"""edufilter: find the educational part of web-scale data."""

__version__ = "0.1.0"
