"""Benchmarks of the bot core: event-loop lag under load, and scheduler overhead and fairness."""
