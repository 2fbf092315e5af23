"""Shared by every stage: the config model, the record type, caching, the home folder, progress."""
