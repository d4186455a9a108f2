"""Reporunner's composition root: configuration, wiring, the CLI and the server."""
