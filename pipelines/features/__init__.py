"""Features: point-in-time-correct feature tables on Spark, the online store, slices of a column."""
