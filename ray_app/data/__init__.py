"""Data layer: the built-in dataset, the data contract, ingest and validation."""
