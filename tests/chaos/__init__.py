"""Fault-injection harness: a seeded mixed stream, an independent oracle, and a comparer.

`stream` generates the events (and knows which ones must be rejected, and why), `oracle`
computes from the whole stream what the service must end up with, following the user
documentation only (it does not import `service.domain`), `compare` reads what the service
produced and counts what was lost, applied twice or wrong, and `faults` drives the servers
and workers of the test stack.
"""
