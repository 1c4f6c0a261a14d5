"""The MLflow layer: the only part of `experiments/` that imports mlflow.

server (where the store is, and whether it answers), runs (a step's run, from open to close),
step_run (how a step writes to its run), links (where a user opens a run), models (log and
rebuild fmae's modules), registry (versions, the champion rule, lineage), serving (the
classifier's REST answer), mlflow_compat (workarounds of MLflow's own bugs, one place).
"""
