"""Celery's configuration for Airflow's CeleryExecutor (the cluster topology, docker-compose):
Airflow's defaults, plus the heavy libraries imported once in each worker before it forks its
pool, so that task processes inherit them as they do under
:class:`mlops_airflow.executors.PreloadingLocalExecutor`.

Set with ``AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=mlops_airflow.celery_config.CELERY_CONFIG``.
A worker's pool processes are forked from the worker's main process, and each task process is
forked from a pool process (Airflow's task supervisor): modules imported in the main process
before the pool starts are shared by every task, copy-on-write. The scheduler imports this
module too (it sends tasks through the same Celery app); only workers preload.
"""
from __future__ import annotations

import logging
import time

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_init

from mlops_airflow.executors import preload, preload_modules

log = logging.getLogger(__name__)

CELERY_CONFIG = dict(DEFAULT_CELERY_CONFIG)


@worker_init.connect
def _preload_before_the_pool_forks(**_) -> None:
    started = time.perf_counter()
    timings = preload(preload_modules())
    log.info("preloaded %d modules for task processes in %.1fs", len(timings), time.perf_counter() - started)
