"""Drills: the local sandbox of real services, fault injection and the scenario runner."""
