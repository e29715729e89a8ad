"""The chaos suite's result type (placeholder until the framework lands)."""
from __future__ import annotations
from dataclasses import dataclass, field
from typing import Any

@dataclass
class ChaosResult:
    part: str
    injected: int
    events: int
    lost: int
    duplicated: int
    details: dict[str, Any] = field(default_factory=dict)
