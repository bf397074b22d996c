"""Hydra entry points and the task wrapper; nothing else lives here."""
