"""Screening: from segments of text to a verdict, the same way on every path.

* :mod:`firewall.screening.runtime` builds a live configuration (detectors, compiled
  policy, routes) that a reload swaps whole;
* :mod:`firewall.screening.policy` turns findings into a verdict (pure, no I/O);
* :mod:`firewall.screening.pipeline` runs a phase's detectors in cost order, cheap gates first;
* :mod:`firewall.screening.screen` is the one entry point the proxy, the relay and the
  offline tools call, so a record gets the same verdict in ``serve`` as in ``scan``.
"""
