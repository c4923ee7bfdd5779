"""Use cases that drive the domain through the adapters' ports."""
