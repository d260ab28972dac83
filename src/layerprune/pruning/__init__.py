"""Removing decoder layers: the surgery (the bottom layer) and the prune stage that saves a checkpoint."""
