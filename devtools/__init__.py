"""Helpers of the project's own tests, benchmarks and demo (not part of the installed app)."""
