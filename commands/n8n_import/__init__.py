"""Import from n8n: an n8n workflow export becomes one of our workflows.

``translate.py`` turns the export into a definition (pure), ``nodes.py``
maps each supported node type, ``expressions.py`` turns n8n's ``{{ }}``
expressions into CEL, and ``service.py`` creates the workflow through the
ordinary create command, so an import is recorded like any other creation.
"""

from commands.n8n_import.service import ImportAnswer, import_n8n, parse_export
from commands.n8n_import.translate import (
    MAX_EXPORT_BYTES,
    ExportInvalid,
    ImportRefused,
    LoopRefused,
    Translation,
    UnsupportedNode,
    translate_export,
)

__all__ = [
    "MAX_EXPORT_BYTES",
    "ExportInvalid",
    "ImportAnswer",
    "ImportRefused",
    "LoopRefused",
    "Translation",
    "UnsupportedNode",
    "import_n8n",
    "parse_export",
    "translate_export",
]
