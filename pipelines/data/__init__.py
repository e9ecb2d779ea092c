"""Raw data in: landing files (CLI and inbox), validating them with Great Expectations, labels, the simulator, drafting a spec from a table."""
