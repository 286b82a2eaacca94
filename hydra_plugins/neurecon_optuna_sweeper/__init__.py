"""Hydra sweeper plugin: Optuna (current versions) with persistent studies and failure handling."""
