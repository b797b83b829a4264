"""Records kept for the retention period: the store (`store`), archiving finished runs and
drill verdicts into it (`archive`), and reading them back (`history`)."""
