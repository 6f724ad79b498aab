"""`cgagent serve`'s entry, kept for callers of exporters.serve.serve: the agent itself (exporter, OOM
watcher, policy controller and the local API) is composed in cgagent/agent.py."""

from __future__ import annotations


def serve(listen: str, web_config_file: str | None, watch: list[str], per_cpu: bool,
          state_dir: str | None, policy_dirs: list[str] | None = None,
          api_socket: str | None = None, api_group: str | None = None, telemetry_path: str = "/metrics",
          log_level: str = "info", collectors: list[str] | None = None) -> int:
    from cgagent.agent import AgentOptions, run

    return run(AgentOptions(listen=listen, web_config_file=web_config_file, watch=watch, per_cpu=per_cpu,
                            state_dir=state_dir, policy_dirs=policy_dirs, api_socket=api_socket,
                            api_group=api_group, telemetry_path=telemetry_path, log_level=log_level,
                            collectors=collectors))
