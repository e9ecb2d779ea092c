"""Releasing a model: the promotion gate and its checks, evaluation against the champion, the model card, rollouts, load tests, rollbacks."""
