"""Kiln's real-model corpus: models.toml (the data), assemble.py (archives), run.py (compiles, CORPUS.md)."""
