"""Streaming lakehouse for real-time recommendations: Kafka -> Spark -> Delta."""
