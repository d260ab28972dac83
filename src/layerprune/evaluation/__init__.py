"""Evaluating a checkpoint on one task: classification by log-likelihood, generation with its graders,
generated code in the sandbox, and a task's chance level."""
