"""Airflow extensions of the MLOps lifecycle: shared DAG settings, the drift sensor, the retrain trigger."""
