"""Airflow extensions of the MLOps lifecycle: shared DAG settings, the sensors, the inbox watcher
(a trigger for event-driven scheduling), the retrain trigger operator, the preloading executor."""
