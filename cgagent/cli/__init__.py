"""Command-line interface. `cgagent.__main__` routes plain `run` invocations to `fastrun`."""
