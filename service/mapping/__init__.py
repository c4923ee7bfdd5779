"""Declarative mapping of a platform's records (Amazon Connect, Genesys Cloud, any other) to
the event contract: a mapping file (`spec`) and the pure function that applies it (`engine`).
Nothing here does I/O; `cx-stream map` (service/map_stage.py) reads and publishes."""
