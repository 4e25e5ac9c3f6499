"""Hyperparameter search: Ray Tune trials on CPU or GPU, ASHA, Optuna, tracked in MLflow."""
