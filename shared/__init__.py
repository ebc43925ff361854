"""Sluice's common library: wire contracts, the Kafka bus, the Redis cache, settings, telemetry."""
