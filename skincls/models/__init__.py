"""Models: the backbone registry, the transfer-learning classifier, and self-describing checkpoints."""
