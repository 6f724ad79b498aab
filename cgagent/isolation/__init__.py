"""Isolated workloads: namespaces, an overlay root from image layers, privilege reduction, exec.

spec.py (options -> IsolationSpec, stored as Record.isolation), child.py (the child side of launch.spawn), rootfs.py and
devices.py (mounts), security.py and seccomp.py (capabilities, no_new_privs, the BPF filter),
namespaces.py, userns.py, enter.py (`cgagent exec`), syscalls.py (ctypes: what `os` lacks in 3.11).
"""
