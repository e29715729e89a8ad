"""Gold: user and item features as of a feature timestamp, computed from silver."""
