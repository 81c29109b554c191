"""mohlog embeddings."""
