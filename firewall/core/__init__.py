"""The ground every other layer stands on, and the only part of ``firewall`` detectors import.

Value types (:mod:`firewall.core.types`), the exception tree (:mod:`firewall.core.errors`),
the upstream-probing context that behavioural detectors get
(:mod:`firewall.core.detector_context`) and the micro-batcher that model detectors run
their inference through (:mod:`firewall.core.batching`). Nothing here knows about HTTP
servers, configuration files, metrics exposition or the command line.
"""
