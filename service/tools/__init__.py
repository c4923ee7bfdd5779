"""User commands around the worker: traffic simulation, file producer, importers."""
