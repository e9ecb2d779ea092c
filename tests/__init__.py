"""The test suite (a package: a wheel in the lock ships a top-level `tests` package of its own)."""
