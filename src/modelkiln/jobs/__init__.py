"""Compilation jobs: the job model, its state machine, the job store and request validation."""
