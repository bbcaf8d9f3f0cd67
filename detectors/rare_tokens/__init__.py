"""Rare-token spikes: words that are neither language nor code in the text around them.
The detector is :mod:`detectors.rare_tokens.detector`; its data and helpers are in
``tables``, ``language`` and ``scan``, its vocabulary files in ``vocabulary`` (the shipped
one in ``data/``)."""
