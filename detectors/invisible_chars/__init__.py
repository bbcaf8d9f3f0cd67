"""Invisible and look-alike characters: zero-width runs, tag characters, bidi controls,
homoglyphs and mixed scripts. The detector is :mod:`detectors.invisible_chars.detector`;
its data and helpers are in ``tables``, ``confusables``, ``context`` and ``scan``."""
