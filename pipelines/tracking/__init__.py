"""The tracking SDK apps use to send events to the collector (stdlib + orjson only).

with Tracker("http://127.0.0.1:8090", write_key="...") as tracker:
    tracker.track("click", user_id="u1", item_id="i9", properties={"position": 2})
"""

from pipelines.tracking.spool import CorruptSpoolFileError, Spool, SpoolLockedError
from pipelines.tracking.tracker import Tracker, TrackerStats, default_spool_dir

__all__ = [
    "CorruptSpoolFileError",
    "Spool",
    "SpoolLockedError",
    "Tracker",
    "TrackerStats",
    "default_spool_dir",
]
