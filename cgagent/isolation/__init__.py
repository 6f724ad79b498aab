"""Isolated workloads: namespaces, an overlay root from image layers, privilege reduction, exec.

spec.py (options -> IsolationSpec, stored as Record.isolation), child.py (the child side of launch.spawn), rootfs.py and
devices.py (mounts), security.py and seccomp.py (capabilities, no_new_privs, the BPF filter),
namespaces.py, userns.py, enter.py (`cgagent exec`), syscalls.py (ctypes: what `os` lacks in 3.11).
"""
# options that only make sense with an image or --rootfs (here, not in spec.py: a host run checks
# them without importing the spec's dataclasses). -e, -w, -u and --init are not among them: a host
# command takes them too (cgagent.procopts)
ISOLATION_KEYS = ("rootfs", "read_only", "volumes", "hostname", "net", "publish", "ip", "userns",
                  "cap_add", "cap_drop", "security_opt", "devices", "entrypoint", "tmpfs", "mounts", "privileged",
                  "pid", "ipc", "dns", "add_host")
