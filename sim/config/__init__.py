"""Configuration: the run schema, parsing of composed mappings, named presets, composition.

The only code that reads configuration mappings. ``schema`` holds the frozen dataclasses of a
run, ``parse`` turns Hydra's composed mapping into them (one-line errors), ``presets`` reads the
named YAML files under ``conf/``, ``compose`` composes ``conf/`` with overrides outside a Hydra
run. May import ``spec``, ``cost`` and ``policy`` (whose config dataclasses it assembles);
nothing under ``cost``, ``policy`` or ``spec`` imports ``parse``, ``presets`` or ``compose``.
"""
