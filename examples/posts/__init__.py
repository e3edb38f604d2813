"""The seed's scenario, run for real: posts, comments and a read model of their counts."""
