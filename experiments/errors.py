"""The one error type a user sees: a message saying what was wrong and what to do."""


class UserError(Exception):
    """A bad parameter, missing data, an unreachable server: ends the step with exit status 2."""
