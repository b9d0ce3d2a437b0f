"""Value objects: hardware datasheet, model shape, engine profile, precision, batch shape.

Frozen dataclasses with units in their field names and the checks of their own values.
Import nothing from the rest of ``sim`` but ``errors``.
"""
