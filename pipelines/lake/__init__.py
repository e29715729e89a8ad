"""The table catalog: names -> locations, reads at a version, history."""
