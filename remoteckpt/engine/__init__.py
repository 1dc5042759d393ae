"""How bytes move: the background event loop (more to come: budgets, planners, executors)."""
