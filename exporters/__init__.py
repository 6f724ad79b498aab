"""Prometheus side of cgagent: HTTP exposition server, web config, collectors."""
