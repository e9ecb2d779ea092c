"""Watching the champion: drift (Evidently and scalable statistics), live performance, retraining requests."""
