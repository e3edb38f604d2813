"""The metrics sites: a worker's /metrics, the master's merge over workers, their limits."""
