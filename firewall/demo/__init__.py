"""The demo: a backdoored classifier to build, and an upstream that serves it.

Never imported by the request path; ``serve --demo-upstream`` is wired in by the CLI.
"""
