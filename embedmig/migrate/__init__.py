"""Building and judging a new index: the runner, the verbs a revision calls, backfill,
evaluation, forecasts, the canary, executors and maintenance. Never imported by ``serve``."""
