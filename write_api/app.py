"""The write API: commands only."""

from __future__ import annotations

from fastapi import FastAPI

from write_api.credentials import router as credentials_router
from write_api.erasure import router as erasure_router
from write_api.errors import COMMAND_PROBLEMS as _WORKFLOW_PROBLEMS
from write_api.hooks import router as hooks_router
from write_api.n8n_import import router as n8n_import_router
from write_api.pins import router as pins_router
from write_api.projects import PROJECT_PROBLEMS
from write_api.projects import router as projects_router
from write_api.routes import router
from write_api.templates import TEMPLATE_PROBLEMS
from write_api.templates import router as templates_router
from write_api.tenancy import router as tenancy_router

__all__ = ["COMMAND_PROBLEMS", "include_write_api"]

COMMAND_PROBLEMS = {**_WORKFLOW_PROBLEMS, **TEMPLATE_PROBLEMS, **PROJECT_PROBLEMS}


def include_write_api(app: FastAPI) -> None:
    app.include_router(router)
    app.include_router(projects_router)
    app.include_router(hooks_router)
    app.include_router(n8n_import_router)
    app.include_router(templates_router)
    app.include_router(pins_router)
    app.include_router(erasure_router)
    app.include_router(credentials_router)
    app.include_router(tenancy_router)
