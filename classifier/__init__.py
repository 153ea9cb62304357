"""edufilter classifier."""
