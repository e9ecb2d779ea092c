"""Serving models: batch scoring on Spark, the online scoring service and its guard, the model process, micro-batching."""
