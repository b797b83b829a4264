"""Failover controller: watches service health and carries out a FailoverPlan's steps."""

__version__ = "0.1.0"
