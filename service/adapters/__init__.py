"""Thin adapters between the domain and Kafka, Redis, Prometheus and HTTP."""
