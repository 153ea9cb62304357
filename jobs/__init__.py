"""edufilter jobs."""
