"""PySpark's Python worker daemon, with the scoring libraries imported once.

Spark starts one daemon per executor (and per Spark Connect session) that forks a Python worker
for each task running Python code (``mapInPandas`` scoring). Stock workers import pandas,
PyArrow, scikit-learn and onnxruntime themselves: seconds per worker on two cores, paid again for every
session. With ``spark.python.daemon.module=pipelines.core.spark_daemon`` the daemon imports them
before forking, and every worker inherits them. Set for the stack's Spark Connect server and
for local sessions; an executor without the project's code keeps the stock daemon.
"""
import onnxruntime  # noqa: F401  (imported for the forked workers: compiled models score with it)
import pandas  # noqa: F401
import pyarrow  # noqa: F401
import sklearn.compose  # noqa: F401
import sklearn.ensemble  # noqa: F401
import sklearn.pipeline  # noqa: F401
from pyspark import daemon

if __name__ == "__main__":
    daemon.manager()
