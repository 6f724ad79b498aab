"""Shell scripts a workload runs to report what it holds, written once for every tier (the v2 guest
imports this file too).

A probe must hold nothing of its own in what it reports: no pipe and no `$(...)` (the shell holds a
pipe's ends while it forks a pipeline's members, so a child listing the shell sometimes sees them:
143 of 3000 runs), and no redirection.
"""

# The fds of the workload's shell, one per line. `; true` keeps the shell: a lone `ls` is exec'd in
# place and lists its own directory fd instead.
SHELL_FDS = "ls /proc/$$/fd; true"

# The same between markers, where other output shares the stream (a terminal's).
SHELL_FDS_MARKED = "printf FDS; ls -1 /proc/$$/fd; echo END"
SHELL_FDS_MARKED_RE = rb"FDS([0-9\s]*)END"
