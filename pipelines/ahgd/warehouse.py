"""The bundled loaders' base: :class:`pipelines.WarehouseLoader`, leaving out ``_parse_errors``.

Idempotent (a run's rows replace those of the same key, or the whole table),
with lineage columns ``_run_id`` and ``_source_sha256`` on every row; see
:mod:`pipelines.loaders`.  The transforms' ``_parse_errors`` lists are for the
validators and never reach the warehouse.
"""

from __future__ import annotations

from pipelines import WarehouseLoader as GenericWarehouseLoader
from pipelines.loaders import sql_literal

from .common import PARSE_ERRORS


class WarehouseLoader(GenericWarehouseLoader):
    """Copy the validated table into ``<state dir>/warehouse.duckdb``, idempotently.

    ``key`` columns name what a row is about (an SA2; an area, year and sex):
    in one transaction the loader deletes the rows with the keys it is about
    to insert, and any rows of the same source file, then inserts, adding
    ``_run_id``.  Loading the same file twice leaves the same rows; a
    corrected file replaces the rows it covers and leaves the others.  With
    ``key = None`` the table is replaced as a whole.
    """

    exclude = (PARSE_ERRORS,)


__all__ = ["WarehouseLoader", "sql_literal"]
