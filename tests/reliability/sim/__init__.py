"""A deterministic discrete-event simulation of the controller (issue 14).

The real engine, executor, journal and policy with the in-memory backends, under a
simulated clock and scheduler (`scheduler`), in a simulated world of replicas, CLI
processes and faulty backends (`world`, `harness`), checked after every event against
the invariants of `invariants`. `run_schedule(seed)` runs one schedule; `runner` runs many
in worker processes. A schedule is a pure function of its seed.

`operators` runs real `Operator` replicas the same way, over an in-memory API server
(`controller.testing_kube`), with leader changes, plans deleted and created again and
failing status writes (issue 22), checked against `op_checks`.
"""
