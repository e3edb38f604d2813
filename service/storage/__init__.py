"""Storage: what makes a write durable. One `Backend` seam (backend.py), the local backend
(local.py and the files it uses) and the Redis backend (redis/) behind it."""
