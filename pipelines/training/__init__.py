"""Training: point-in-time training sets built from the gold feature history."""
