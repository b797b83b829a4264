"""Launchers for the real local servers the sandbox and the contract tests use.

One module per server. Each starts its server in the foreground from a fresh temp
directory on free ports, waits until it answers, and stops it by its own PID.
"""
