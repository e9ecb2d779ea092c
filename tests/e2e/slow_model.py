"""A step that makes any model slow: the injected failing challenger of the rollout test (a
module of its own, so that the staging service can unpickle a model that uses it)."""
import time

DELAY_S = 1.5


def slow_identity(frame):
    time.sleep(DELAY_S)
    return frame
