"""The request path: read, screen the input, forward, screen the output, answer.

:mod:`firewall.proxy.handler` owns one request from its first byte to its audit line;
:mod:`firewall.proxy.relay` forwards it and relays the upstream's answer (screened body,
screened stream or untouched); :mod:`firewall.proxy.streaming` parses and holds back SSE;
:mod:`firewall.proxy.answers` renders blocks and errors; :mod:`firewall.proxy.exchange`
is the per-request record the audit line is written from.
"""
