"""Locust users of the scoring service: the rollout's pre-deployment load test
(:mod:`pipelines.load_test`) and the serving benchmark (``bench/bench_serving.py``) run it headless.

``BENCH_TARGET=ours``: single-record requests to our service by entity id (its features come from
the online store). ``BENCH_TARGET=mlflow``: the same entities' feature rows, sent whole to
``mlflow models serve`` (its ``/invocations``, ``dataframe_records``). ``BENCH_RECORDS`` is a JSON
file of ``{"id": ..., "record": {...}}``; ``BENCH_RATE`` the requests per second of one user.
"""
from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, constant_throughput, task

TARGET = os.environ.get("BENCH_TARGET", "ours")
USE_CASE = os.environ.get("BENCH_USE_CASE", "churn")
with open(os.environ["BENCH_RECORDS"]) as handle:
    ROWS = json.load(handle)


class ScoringUser(FastHttpUser):   # geventhttpclient: the load generator's own cost stays small
    wait_time = constant_throughput(float(os.environ.get("BENCH_RATE", "5")))

    @task
    def predict(self):
        row = random.choice(ROWS)
        if TARGET == "ours":
            self.client.post(f"/v1/{USE_CASE}/predict", json={"entity_ids": [row["id"]]}, name="predict")
        elif TARGET == "records":   # ours, the record carrying its features
            self.client.post(f"/v1/{USE_CASE}/predict", json={"records": [row["record"]]}, name="predict")
        else:
            self.client.post("/invocations", json={"dataframe_records": [row["record"]]}, name="predict")
