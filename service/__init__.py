"""cx-stream: First Contact Resolution, repeat contacts and perception, live from Kafka."""

__version__ = "0.1.0"
