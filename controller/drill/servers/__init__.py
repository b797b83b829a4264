"""Launchers for the real local servers the sandbox and the contract tests use.

One module per server, each a `base.Launcher`: it starts its server in the foreground
from a fresh temp directory on free ports (`base.free_port`), waits until it answers
(`base.wait_ready`), and stops it by its own PID.
"""
