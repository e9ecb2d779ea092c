"""Locust users of the scoring service: the rollout's pre-deployment load test
(:mod:`pipelines.release.load_test`) and the serving benchmark (``bench/bench_serving.py``) run it headless.

``BENCH_TARGET=ours``: single-record requests to our service by entity id (its features come from
the online store). ``BENCH_TARGET=mlflow``: the same entities' feature rows, sent whole to
``mlflow models serve`` (its ``/invocations``, ``dataframe_records``). ``BENCH_RECORDS`` is a JSON
file of ``{"id": ..., "record": {...}}``; ``BENCH_RATE`` the requests per second of one user. Users
start at random points of one period, so the offered load is steady.
"""
from __future__ import annotations

import json
import os
import random
import time

import gevent
from locust import FastHttpUser, task

TARGET = os.environ.get("BENCH_TARGET", "ours")
USE_CASE = os.environ.get("BENCH_USE_CASE", "churn")
with open(os.environ["BENCH_RECORDS"]) as handle:
    ROWS = json.load(handle)
PERIOD = 1 / float(os.environ.get("BENCH_RATE", "5"))   # seconds between one user's requests
# the scoring service's API key (pipelines.serving.guard), handed over in the environment
HEADERS = {"Authorization": os.environ["BENCH_AUTHORIZATION"]} if os.environ.get("BENCH_AUTHORIZATION") else {}


class ScoringUser(FastHttpUser):   # geventhttpclient: the load generator's own cost stays small
    """One request every ``PERIOD`` seconds, at a phase of its own. With Locust's
    ``constant_throughput`` users spawned together stay in step (its pacing counts from the user's
    creation): 40 users at 5 requests/s each were 40 requests at once every 200 ms, not a steady
    200 requests/s. A request slower than the period delays the next one; none are made up for."""

    def on_start(self):
        self.next_at = time.perf_counter() + random.uniform(0, PERIOD)
        gevent.sleep(self.next_at - time.perf_counter())

    def wait_time(self) -> float:
        now = time.perf_counter()
        self.next_at = max(self.next_at + PERIOD, now)
        return self.next_at - now

    @task
    def predict(self):
        row = random.choice(ROWS)
        if TARGET == "ours":
            self.client.post(f"/v1/{USE_CASE}/predict", json={"entity_ids": [row["id"]]}, name="predict",
                             headers=HEADERS)
        elif TARGET == "records":   # ours, the record carrying its features
            self.client.post(f"/v1/{USE_CASE}/predict", json={"records": [row["record"]]}, name="predict",
                             headers=HEADERS)
        else:
            self.client.post("/invocations", json={"dataframe_records": [row["record"]]}, name="predict")
