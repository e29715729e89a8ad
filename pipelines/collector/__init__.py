"""The ingestion edge's server side: an HTTP collector that validates events against the
contract and publishes them to Kafka (``lakehouse collector serve``)."""

from pipelines.collector.app import Collector
from pipelines.collector.server import BackgroundCollector, CollectorServer, serve

__all__ = ["BackgroundCollector", "Collector", "CollectorServer", "serve"]
