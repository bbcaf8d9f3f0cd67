"""Rare-token spikes: words that are neither language nor code in the text around them.
The detector is :mod:`detectors.rare_tokens.detector`."""
