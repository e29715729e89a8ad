"""Every table of the lake, gathered from the layers that own them: the registry the runtime
hands the catalog."""

from __future__ import annotations

from pipelines.bronze.tables import TABLES as BRONZE
from pipelines.gold.tables import TABLES as GOLD
from pipelines.lake.tables import LAKE_SNAPSHOTS, TableRegistry
from pipelines.monitoring.tables import TABLES as MONITORING
from pipelines.quality.tables import TABLES as QUALITY
from pipelines.silver.tables import TABLES as SILVER
from pipelines.training.tables import TABLES as TRAINING

LAKE_TABLES = TableRegistry(
    [*BRONZE, *SILVER, *GOLD, *TRAINING, *QUALITY, LAKE_SNAPSHOTS, *MONITORING]
)
