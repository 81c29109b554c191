"""mohlog agent/sources."""
