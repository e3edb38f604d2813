-- wrk script: every read carries the same processed token (bench/gateway.py
-- records bench-gate at 10^15 first), as a client does that keeps sending the
-- token of its last write.
wrk.headers["X-Event-Streamex-Entity-Timestamp"] = "bench-gate/1"
