"""Synthetic, deterministic clickstream data that follows the event contract."""
