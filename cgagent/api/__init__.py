"""The agent's local HTTP+JSON API (server.py), its OpenAPI description (openapi.json) and the CLI's
thin client of it (client.py)."""
