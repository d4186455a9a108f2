"""The read side's building blocks: document updates, filters, projectors."""

from projections.updates import UpdateError, apply_update

__all__ = ["UpdateError", "apply_update"]
