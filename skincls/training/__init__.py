"""Training: the Trainer, its callbacks, the frozen-feature cache, optimisers, history and a run from a config."""
