"""``sa2_health_profile``: every SA2's SEIFA indexes with the mortality of its SA3.

    extract  -> ProfileExtractor    warehouse tables seifa_sa2 and mortality_region (SA3,
                                    Persons), and the SA2 attribute file (area in km²)
    transform-> ProfileTransformer  one row per SA2: SEIFA, area, density, and its SA3's
                                    latest-year mortality
    validate -> ProfileValidator    every SA2 of seifa_sa2 exactly once
    load     -> ProfileLoader       warehouse table sa2_health_profile, replaced as a whole

The profile is derived from whole warehouse tables, so each load replaces
it.  Its ``_source_sha256`` is, per row, the SHA-256 of the distinct
``_source_sha256`` values of the rows it joined (its ``seifa_sa2`` row, its
SA3's ``mortality_region`` row, the attribute file when the SA2 is in it),
sorted and joined with ``,`` — ``sha256('a1…,f0…')``; the three inputs'
hashes are kept next to it as ``seifa_source_sha256``,
``mortality_source_sha256`` and ``areas_source_sha256``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from pipelines import ConfigError, InputError, quote, sha256_file

from .common import CONFIG_DIR, SOURCE_SHA
from .warehouse import WarehouseLoader, sql_literal

TABLES = ("seifa_sa2", "mortality_region")
SEIFA_COLUMNS = ("sa2_code", "sa2_name", "state_code", "state_name", "state_abbr", "sa4_code",
                 "sa3_code", "irsd_score", "irsd_decile", "irsad_score", "irsad_decile",
                 "ier_score", "ier_decile", "ieo_score", "ieo_decile",
                 "usual_resident_population", SOURCE_SHA)
MORTALITY_COLUMNS = ("area_code", "area_name", "year", "age_standardised_rate_per_100000",
                     "premature_deaths_asr_per_100000", "potentially_avoidable_deaths", SOURCE_SHA)
#: property names of the SA2 attribute file, ASGS 2021 spellings first
AREA_PROPERTIES = {
    "sa2_code": ("SA2_CODE", "SA2_CODE21", "SA2_MAIN21", "SA2_CODE_2021"),
    "sa2_name": ("SA2_NAME", "SA2_NAME21", "SA2_NAME_2021"),
    "area_sqkm": ("AREA_SQKM", "AREASQKM21", "AREASQKM", "AREA_ALBERS_SQKM"),
}
DEFAULT_AREAS = "../data/sa2_boundaries_simplified.geojson"


class ProfileExtractor:
    """Copy what the profile needs out of the warehouse, and read the SA2 attribute file.

    The warehouse is read under its lock (``context.warehouse()``), written to
    Parquet in the state directory's ``tmp`` and read into temporary tables of
    the stage's own database, so no warehouse file stays open after the lock
    is released.  ``areas`` is a GeoJSON FeatureCollection of SA2 attributes
    (only ``properties`` are read), relative to ``base_dir`` (default: the
    bundled config folder).
    """

    def __init__(self, areas: str = DEFAULT_AREAS, base_dir: str | None = None,
                 target_database: str | None = None):
        self.areas, self.base_dir, self.target_database = areas, base_dir, target_database

    def extract(self, context: Any) -> dict[str, Any]:
        base = Path(self.base_dir or context.config_dir or CONFIG_DIR)
        areas = Path(os.path.normpath(base / Path(self.areas).expanduser()))
        if not areas.is_file():
            # the configuration's fault, not an input's (this pipeline has no input file)
            raise ConfigError(f"SA2 attribute file {areas} of pipeline {context.pipeline_name!r} "
                              "does not exist; check the extract stage's areas option (a path "
                              f"relative to {base})")
        tmp = Path(context.state_dir) / "tmp" / f"{context.run_id}.{context.stage_name}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            with context.warehouse(self.target_database) as wh:
                self._check_tables(context, wh)
                wh.execute(f"COPY (SELECT {_cols(SEIFA_COLUMNS)} FROM seifa_sa2) "
                           f"TO {sql_literal(str(tmp / 'seifa.parquet'))} (FORMAT parquet)")
                wh.execute(f"COPY (SELECT {_cols(MORTALITY_COLUMNS)} FROM mortality_region "
                           "WHERE geography_level = 'SA3' AND sex = 'Persons') "
                           f"TO {sql_literal(str(tmp / 'mortality.parquet'))} (FORMAT parquet)")
            for name in ("seifa", "mortality"):
                context.duckdb.execute(
                    f"CREATE TEMP TABLE {name}_in AS SELECT * FROM read_parquet($path)",
                    {"path": str(tmp / f"{name}.parquet")})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {"seifa": context.sql("SELECT * FROM temp.seifa_in"),
                "mortality": context.sql("SELECT * FROM temp.mortality_in"),
                "areas": context.sql(_areas_sql(), params={
                    "path": str(areas), "sha": sha256_file(areas),
                    "max_size": max(areas.stat().st_size + 1024, 1 << 24)})}

    @staticmethod
    def _check_tables(context: Any, wh: Any) -> None:
        have = {r[0] for r in wh.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()}
        missing = [t for t in TABLES if t not in have]
        if missing:
            feeds = {"seifa_sa2": "seifa_sa2", "mortality_region": "mortality_regions"}
            raise InputError(
                f"pipeline {context.pipeline_name!r} reads warehouse table(s) "
                f"{', '.join(missing)}, which do not exist yet; run pipeline(s) "
                f"{', '.join(feeds[t] for t in missing)} first")


def _cols(names: tuple[str, ...]) -> str:
    return ", ".join(quote(n) for n in names)


def _areas_sql() -> str:
    def prop(name: str) -> str:
        paths = ", ".join(f"json_extract_string(f, '$.properties.{p}')"
                          for p in AREA_PROPERTIES[name])
        return f"coalesce({paths})"

    return (f"SELECT trim({prop('sa2_code')}) AS sa2_code, {prop('sa2_name')} AS sa2_name, "
            f"TRY_CAST({prop('area_sqkm')} AS DOUBLE) AS area_sqkm, $sha AS {SOURCE_SHA} "
            "FROM (SELECT unnest(json_extract(json, '$.features[*]')) AS f FROM "
            "read_json_objects($path, format = 'unstructured', maximum_object_size = $max_size))")


class ProfileTransformer:
    """Join in SQL: SEIFA + area/density + the SA3's latest year of Persons mortality."""

    def transform(self, context: Any) -> Any:
        seifa = context.output_table("extract", "seifa")
        mort = context.output_table("extract", "mortality")
        areas = context.output_table("extract", "areas")
        return context.sql(f"""
            WITH latest AS (
                SELECT * FROM {mort}
                QUALIFY row_number() OVER (PARTITION BY area_code ORDER BY year DESC) = 1
            ), area AS (
                SELECT sa2_code, any_value(area_sqkm) AS area_sqkm,
                       any_value({SOURCE_SHA}) AS {SOURCE_SHA}
                FROM {areas} GROUP BY sa2_code
            )
            SELECT s.sa2_code, s.sa2_name, s.state_code, s.state_name, s.state_abbr,
                   s.sa4_code, s.sa3_code, m.area_name AS sa3_name,
                   s.irsd_score, s.irsd_decile, s.irsad_score, s.irsad_decile,
                   s.ier_score, s.ier_decile, s.ieo_score, s.ieo_decile,
                   s.usual_resident_population, a.area_sqkm,
                   CASE WHEN a.area_sqkm > 0
                        THEN s.usual_resident_population / a.area_sqkm END
                       AS population_density_per_sqkm,
                   m.year AS sa3_mortality_year,
                   m.age_standardised_rate_per_100000 AS sa3_age_standardised_rate_per_100000,
                   m.premature_deaths_asr_per_100000 AS sa3_premature_deaths_asr_per_100000,
                   m.potentially_avoidable_deaths AS sa3_potentially_avoidable_deaths,
                   s.{SOURCE_SHA} AS seifa_source_sha256,
                   m.{SOURCE_SHA} AS mortality_source_sha256,
                   a.{SOURCE_SHA} AS areas_source_sha256,
                   sha256(array_to_string(list_sort(list_distinct(list_value(
                       s.{SOURCE_SHA}, m.{SOURCE_SHA}, a.{SOURCE_SHA}))), ',')) AS {SOURCE_SHA}
            FROM {seifa} AS s
            LEFT JOIN latest AS m ON m.area_code = s.sa3_code
            LEFT JOIN area AS a ON a.sa2_code = s.sa2_code
            ORDER BY s.sa2_code""")


class ProfileValidator:
    """Every SA2 of the extracted ``seifa_sa2`` appears in the profile exactly once."""

    def validate(self, context: Any) -> list[str]:
        profile = context.output_table(context.input_stage())
        seifa = context.output_table("extract", "seifa")
        missing, extra = context.duckdb.execute(
            f"SELECT (SELECT count(*) FROM (SELECT sa2_code FROM {seifa} EXCEPT "
            f"SELECT sa2_code FROM {profile})), (SELECT count(*) FROM {profile}) - "
            f"(SELECT count(*) FROM {seifa})").fetchone()
        problems = []
        if missing:
            problems.append(f"{missing} SA2(s) of seifa_sa2 are missing from the profile")
        if extra:
            problems.append(f"the profile has {extra} row(s) more than seifa_sa2 has SA2s")
        return problems


class ProfileLoader(WarehouseLoader):
    """Replace warehouse table ``sa2_health_profile`` (it is derived from whole tables)."""

    table = "sa2_health_profile"
    key = None


__all__ = ["ProfileExtractor", "ProfileTransformer", "ProfileValidator", "ProfileLoader"]
