"""The search: Ray Tune runs CAE trials chosen by Optuna's TPE, stopped early by ASHA, each
tracked as a child MLflow run of the search's run."""
