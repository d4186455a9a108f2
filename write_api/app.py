"""The write API: commands only."""

from __future__ import annotations

from fastapi import FastAPI

from write_api.errors import COMMAND_PROBLEMS
from write_api.hooks import router as hooks_router
from write_api.routes import router
from write_api.tenancy import router as tenancy_router

__all__ = ["COMMAND_PROBLEMS", "include_write_api"]


def include_write_api(app: FastAPI) -> None:
    app.include_router(router)
    app.include_router(hooks_router)
    app.include_router(tenancy_router)
