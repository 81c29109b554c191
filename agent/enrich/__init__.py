"""mohlog agent/enrich."""
