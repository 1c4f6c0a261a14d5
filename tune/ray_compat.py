"""OptunaSearch that tells Optuna the truth about trials the scheduler stopped."""

import optuna
from ray.tune.search.optuna import OptunaSearch

from tune.trainable import stopped_early


class PruningAwareOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch reports a trial ASHA stopped as COMPLETE with its half-trained
    last value (see its on_trial_complete), which misleads TPE into treating early,
    high losses as finished results. Here such trials are PRUNED, as an Optuna pruner
    would have made them; their per-epoch values stay as intermediate values."""

    def __init__(self, *args, max_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if result and result.get("diverged") and trial_id not in self._completed_trials:  # FAIL, not a value
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return None
        if error or not stopped_early(result, self.max_epochs) or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study created or trial told


def optuna_storage(path: str) -> optuna.storages.RDBStorage:
    """A persistent study (sqlite), browsable with `optuna-dashboard sqlite:///PATH`."""
    return optuna.storages.RDBStorage(f"sqlite:///{path}")
