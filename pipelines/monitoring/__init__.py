"""Monitoring: drift of feature distributions between a reference and a current sample."""
