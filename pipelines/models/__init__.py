"""Models in MLflow: the tracking server and registry, model tasks (classifier, regressor), signatures, rollout state on the registry."""
