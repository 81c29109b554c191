"""mohlog server."""
