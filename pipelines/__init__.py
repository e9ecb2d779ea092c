"""Domain logic of the model lifecycle, importable and testable without Airflow.

Modules are imported lazily by the DAGs: importing this package loads nothing heavy.
"""
