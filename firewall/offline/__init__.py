"""Screening without the network: ``scan`` over JSONL records and threshold calibration.

Both run :func:`firewall.screening.screen.screen`, the function the proxy runs.
"""
