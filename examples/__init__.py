"""Examples that run the whole promise end to end (see each one's README)."""
