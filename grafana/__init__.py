"""Grafana dashboards for cgagent, generated from code (grafana-foundation-sdk).

`python -m grafana.generate` rewrites grafana/dashboards/*.json; tests/test_grafana.py checks that the
committed JSON is what the code generates. Provisioning for Grafana lives in grafana/provisioning/.
"""
