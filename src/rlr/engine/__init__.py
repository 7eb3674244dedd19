"""Training and evaluation glue: the only place that loops over data."""
