"""mohlog agent."""
