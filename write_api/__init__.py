"""The write API (FastAPI): POST/PATCH/DELETE commands."""

from write_api.app import COMMAND_PROBLEMS, include_write_api

__all__ = ["COMMAND_PROBLEMS", "include_write_api"]
