"""mohlog agent/sinks."""
