"""The read API (FastAPI): queries over the document views."""

from read_api.errors import QUERY_PROBLEMS
from read_api.routes import router

__all__ = ["QUERY_PROBLEMS", "router"]
