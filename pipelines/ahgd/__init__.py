"""The bundled AHGD pipelines, on real ABS and AIHW data.

    seifa_sa2          ABS SEIFA 2021 by SA2          -> warehouse table seifa_sa2
    mortality_regions  AIHW MORT books, Table 1       -> warehouse table mortality_region
    sa2_health_profile both, by SA2 (after either)    -> warehouse table sa2_health_profile

YAML in ``pipelines/ahgd/config/`` (``master.yaml`` lists the three), data in
``pipelines/ahgd/data/`` (see its ATTRIBUTION.md), stage classes in
``seifa``, ``mortality`` and ``profile``; see docs/bundled-pipelines.md.
Importing this package imports nothing heavy.
"""
