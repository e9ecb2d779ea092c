"""The host name Airflow records for a task (``[core] hostname_callable``): the worker's name when
several workers share one machine (the native cluster topology's Celery workers), so that a task
instance tells which worker ran it; the machine's name otherwise."""
from __future__ import annotations

import os
import socket

WORKER_NAME = "MLOPS_WORKER_NAME"


def worker_hostname() -> str:
    """``MLOPS_WORKER_NAME@<machine>`` when the worker was given a name, else the machine's name."""
    machine = socket.getfqdn()
    name = os.environ.get(WORKER_NAME)
    return f"{name}@{machine}" if name else machine
