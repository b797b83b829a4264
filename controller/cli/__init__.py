"""`failoverctl`: validate and preview plans, run the loop, request and follow failovers.

One module per group of commands, each registering on the `main` group of `base`:
`plans` (validate, plan, simulate, schema), `runs` (failover, failback, ready, approve,
done, status, report), `loop` (run), `ops` (dns-prepare, verify, operator, drill),
`backups` (backup), `records` (history, prune), `evaluate` (evaluate), `access`
(secrets-role) and `traces` (trace export).

Exit codes (also in the README):
  0  success
  1  the operation ran and failed (a run ended Failed, a drill missed its verdict)
  2  bad input: an invalid plan, an unknown option, an unknown run
  3  the journal cannot be used (corrupt or unreadable); it is never replaced silently
  4  waiting: the run needs an approval (`failoverctl approve RUN`) or is still going
`-o json` prints machine-readable output on every command a script would parse.

This package is the entry point (`failoverctl = controller.cli:main`, `python -m
controller`): it alone imports the command modules and the completion fix, and none of them
imports the package back (they import `base`, which imports no command module).
"""

from controller.cli import (  # noqa: F401  (each registers its commands or completion)
    access,
    backups,
    completion,
    evaluate,
    loop,
    ops,
    plans,
    records,
    runs,
    traces,
)
from controller.cli.base import main

__all__ = ["main"]
