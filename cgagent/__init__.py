"""cgagent: launch workloads under cgroup limits and export what the kernel reports."""

__version__ = "0.1.0"
