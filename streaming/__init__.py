"""Streaming layer: Kafka topics and broker, the PyFlink job, event schemas and replay."""
