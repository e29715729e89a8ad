"""IO adapters: Kafka source, Delta sink, checkpoints and triggers."""
