"""The model layer every consumer shares: a reference to a registered version (`ModelRef`),
the loaded version (`LoadedModel`: booster, features, contract, threshold, lineage), the one
scoring path (`Scorer`), the contract-derived request schema, and the MLflow model format.

Serve, the gate, the latency check, tuning and the pipeline all score through `Scorer`.
"""
