"""Model evaluation: metrics on held-out data and the promotion gate."""
