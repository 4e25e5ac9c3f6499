"""Watching served models: the prediction log (drift and the retraining loop build on it)."""
