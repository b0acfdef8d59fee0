"""The injector process: Frida spawns or attaches the targets, gives each its
shared-memory segment, loads the agent (native/agent/) and follows each
target to its end. One-shot (injector.py) or the daemon's (daemon.py)."""
