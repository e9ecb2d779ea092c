"""Spark sessions: one factory, so the same code runs locally, on Spark Connect or on a cluster.

``SPARK_REMOTE=sc://host:15002`` attaches to a running Spark Connect server (about 2 s,
against 6-11 s for a new local JVM); otherwise ``MLOPS_SPARK_MASTER`` (default
``local[2]``, or ``spark://host:7077``) starts a classic session.

On Spark Connect every task process would otherwise open a server-side session of its own,
and the server starts a Python worker daemon per session (scikit-learn, pandas and PyArrow
imported again, about 4 s on two cores, and 400 MB kept until the session expires an hour
later). Task processes of one deployment therefore share a session: its id is derived from
the server URL, the lake and the hour, so that an hour's tasks reuse one session (warm Python
workers) and a session idle for an hour, which the server then closes, is never asked for again.
Its plan cache is off (``CONNECT_SESSION_CONF``): cached reads would keep an earlier task's file
listing. ``MLOPS_SPARK_SHARED_SESSION=0`` gives each process its own session. A shared
session must never be stopped by a task (``spark.stop()`` would close it for everyone).
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import uuid

from pipelines.core.config import Settings

log = logging.getLogger(__name__)

# SQL settings every session gets; all are runtime settings, so they apply on Spark Connect too.
SESSION_CONF = {
    "spark.sql.sources.partitionOverwriteMode": "dynamic",   # replace only the partitions written
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",  # ds stays a string
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": os.environ.get("MLOPS_SPARK_SHUFFLE_PARTITIONS", "4"),
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # rows per Arrow batch handed to Python (scoring): a model call has a fixed cost of a few ms, so
    # larger batches score faster (bench_scoring, 1M rows: 234k rows/s at 100,000 against ~160k at 10,000)
    "spark.sql.execution.arrow.maxRecordsPerBatch": os.environ.get("MLOPS_SPARK_ARROW_BATCH_ROWS", "100000"),
    # list a table's partition folders on the driver: a distributed listing job (the default past
    # 32 folders) costs seconds per read, and a daily table passes 32 folders in its second month
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
}


SHARED_SESSION_PERIOD_S = 3600   # not longer than the server's idle timeout (an hour by default)


def shared_session_url(remote: str, scope: str, now: float) -> str:
    """``remote`` with the session id that every task of ``scope`` uses during ``now``'s period.

    A URL that already names a session is left alone. The id is a version-4 UUID built from a
    hash, as Spark Connect requires.
    """
    if "session_id=" in remote:
        return remote
    period = int(now // SHARED_SESSION_PERIOD_S)
    digest = hashlib.sha256(f"{remote}|{scope}|{period}".encode()).digest()
    session_id = uuid.UUID(bytes=digest[:16], version=4)
    base = remote if ";" in remote else remote.rstrip("/") + "/"
    return f"{base};session_id={session_id}"


def _is_closed_session(exc: Exception) -> bool:
    return "SESSION_CLOSED" in str(exc) or "SESSION_NOT_SAME" in str(exc)


def _connect(settings: Settings, app_name: str):
    """A Spark Connect session, shared by the deployment's tasks unless switched off."""
    from pyspark.sql import SparkSession

    url = settings.spark_remote
    if settings.spark_shared_session:
        url = shared_session_url(url, str(settings.lake), time.time())
    log.info("attaching to Spark Connect at %s", url)
    try:   # the builder's options are the session's first calls
        spark = SparkSession.builder.remote(url).appName(app_name).getOrCreate()
        _configure(spark, connect=True)
    except Exception as exc:   # the shared session was closed (stopped, or expired early): a new one
        if url == settings.spark_remote or not _is_closed_session(exc):
            raise
        log.warning("shared Spark Connect session is closed (%s); using a session of this process's own",
                    str(exc).splitlines()[0])
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        _keep_open(ConnectSession._default_session)   # the failed one
        spark = SparkSession.builder.remote(settings.spark_remote).appName(app_name).create()
        _keep_open(spark)
        # PySpark keeps the first session as the process's default and the thread's active one
        # (it only fills them when empty); later lookups (the builder, PySpark's own conf reads)
        # must find the replacement
        ConnectSession._default_session = spark
        ConnectSession._active_session.session = spark
        _configure(spark, connect=True)
    return spark


def _keep_open(session) -> None:
    """Leave a session's channel to the process's exit. With two sessions in one process (the
    closed shared one and its replacement), gRPC can deadlock when their finalizers close them."""
    if session is not None:
        session.client.close = lambda: None


# Spark Connect caches the analysed plan of each ``spark.read`` per session, file listing included:
# in a session shared by many tasks a table read again would miss the partitions written since.
CONNECT_SESSION_CONF = {"spark.connect.session.planCache.enabled": "false"}


def _configure(spark, connect: bool = False) -> None:
    for key, value in (SESSION_CONF | CONNECT_SESSION_CONF if connect else SESSION_CONF).items():
        spark.conf.set(key, value)


def get_spark(settings: Settings, app_name: str = "mlops"):
    """A Spark session for ``settings``: Spark Connect if configured, else a classic master."""
    from pyspark.sql import SparkSession

    started = time.perf_counter()
    if settings.spark_remote:
        spark = _connect(settings, app_name)
        log.info("Spark session ready in %.1f s (attached to Spark Connect)", time.perf_counter() - started)
        return spark
    else:
        log.info("starting Spark session on master %s", settings.spark_master)
        # Python workers must see the same packages (sklearn for scoring UDFs) as the driver;
        # PySpark reads the worker interpreter from the environment, not only from the conf.
        worker_python = os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (SparkSession.builder.master(settings.spark_master).appName(app_name)
                   .config("spark.pyspark.python", worker_python)
                   .config("spark.ui.showConsoleProgress", "false")
                   .config("spark.driver.memory", os.environ.get("MLOPS_SPARK_DRIVER_MEMORY", "2g")))
        if settings.spark_master.startswith("local"):
            # everything on this machine: listeners on loopback only, Python workers start warm
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            builder = builder.config("spark.python.daemon.module", "pipelines.core.spark_daemon")
        for key, value in SESSION_CONF.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("WARN")
    _configure(spark)
    log.info("Spark session ready in %.1f s (started on %s; SPARK_REMOTE=sc://... attaches to a running "
             "server instead)", time.perf_counter() - started, settings.spark_master)
    return spark


def column(name: str):
    """A Spark column by its exact name: quoted, so that a dot or a space in a team's column name
    (``mean.radius``) is part of the name, not a path into a struct."""
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def table_exists(path) -> bool:
    """Whether a lake table has at least one partition (local or mounted lake)."""
    return os.path.isdir(path) and any(name.startswith("ds=") for name in os.listdir(path))
