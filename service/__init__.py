"""edufilter service."""
