"""The Redis backend: Functions for writes, a Stream follower for each local copy.

`library` holds the Lua and the formats around it, `connection` the URL forms,
`writer` the coalescing FCALLs, `follower` the local copy, `backend` the wiring.
"""
