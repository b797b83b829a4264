"""The parts of the reconcile engine, one concern each; `controller.loop.Engine` wires
them and runs the cycle (observe → decide → act → record).

- `core`: what every part shares (plan, journal, clock, fenced identity, the cycle's events)
- `cycle`: what a cycle did, as typed events (`Cycle`, `Waiting`, `WaitFor` ...)
- `lease`: who may act on the plan (journal lease, coordinator, Kubernetes Lease), fencing
- `store`: the plan's state row and its gauges
- `noticing`: notices decided once, handed to the outbox, replayed after a restart
- `observing`: probe metrics, the backup site's readiness checks
- `deciding`: the policy's decision, kept and logged; a run's level raised
- `people`: requests, approvals, human steps
- `starting`: which run a decision or request starts, and refusals
- `ending`: completing or failing a run, reverting what it applied
- `running`: a run's steps, in order, until done, waiting or failed

Parts import only parts listed above them (and nothing above the engine).
"""
