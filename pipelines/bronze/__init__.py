"""Bronze: raw Kafka records landed in Delta, append-only."""
