"""The process: listening sockets, admin endpoints, signals, reload, drain and logging.

:mod:`firewall.server.lifecycle` starts and stops everything;
:mod:`firewall.server.app` builds the proxy and admin applications;
:mod:`firewall.server.reload` swaps in a new runtime on SIGHUP or a file change.
"""
