"""The HTTP vocabulary both sites share: wire names, problem+json, JSON responses, auth."""
