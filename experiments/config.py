"""Step configs: frozen dataclasses parsed from `--key value` flags, one parser for the
console command and the MLproject entry points."""

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

import torch

from experiments.errors import UserError

C = TypeVar("C")
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


@dataclass(frozen=True)
class CommonConfig:
    data_dir: str = ""  # folder with the four *-ubyte.gz files; "" searches the usual places
    train_subset: int = 0  # train on this many images only (0 = all); for quick tries and tests
    seed: int = 0  # seeds the split, initialisation and shuffling
    device: str = "auto"  # auto (cuda if present), cpu or cuda

    def __post_init__(self):
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_positive(self, "train_subset", allow_zero=True)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("device=cuda was asked for but PyTorch sees no CUDA device here. Use device=auto or device=cpu.")

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name}={value!r} is not one of {', '.join(choices)}. Pick one of those.")


def check_positive(config: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(config, name)
        if value < 0 or (value == 0 and not allow_zero):
            bound = "0 or more" if allow_zero else "more than 0"
            raise UserError(f"{name}={value} must be {bound}.")


def parse_bool(text: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise ValueError(text)


def parse_value(kind: type, text: str) -> Any:
    if kind is bool:
        return parse_bool(text)
    return kind(text)


def parse_config(cls: type[C], argv: list[str], prog: str = "fmae") -> C:
    """Build cls from `--key value` flags; unknown keys and wrong types are a UserError."""
    hints = get_type_hints(cls)
    parser = argparse.ArgumentParser(prog=prog, allow_abbrev=False, add_help=True)
    for field in dataclasses.fields(cls):
        flags = [f"--{field.name}"]
        if "_" in field.name:
            flags.append(f"--{field.name.replace('_', '-')}")
        parser.add_argument(*flags, dest=field.name, default=None, metavar=hints[field.name].__name__.upper())
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as exc:
        if exc.code == 0:  # --help
            raise
        raise UserError(f"could not read the arguments {argv} of {prog}; flags take the form --name value.") from None
    if unknown:
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        raise UserError(f"{prog} does not take {' '.join(unknown)!r}. Its parameters are: {known}.")
    values = {}
    for name, text in vars(args).items():
        if text is None:
            continue
        try:
            values[name] = parse_value(hints[name], text)
        except ValueError:
            raise UserError(f"{name}={text!r} is not a valid {hints[name].__name__}.") from None
    return cls(**values)


def config_params(config: Any) -> dict[str, Any]:
    """The config as MLflow params, spelled as the command line spells them."""
    return {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in dataclasses.asdict(config).items()}
