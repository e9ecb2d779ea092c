"""Domain logic of the model lifecycle, importable and testable without Airflow.

Modules are imported lazily by the DAGs: importing this package loads nothing heavy.
"""
import warnings

# Pickling a model (cloudpickle for Spark, skops for MLflow) looks functions up in every loaded
# module. Inside an Airflow task that includes Airflow's deprecated-import shims, which answer
# each lookup with a warning: thousands of task-log lines per model, and seconds of logging.
warnings.filterwarnings("ignore", message=r"The `airflow\.", category=FutureWarning)
