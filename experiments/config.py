"""Step configs: frozen dataclasses parsed from `--key value` flags, one parser for the
console command and the MLproject entry points."""

import argparse
import dataclasses
import inspect
import re
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

import torch

from experiments.data import check_train_subset
from experiments.errors import UserError

C = TypeVar("C")
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
FIELD_COMMENT = re.compile(r"^\s+(\w+):[^#\n]*=[^#\n]*#\s*(.+)$", re.M)  # `name: type = default  # why`


@dataclass(frozen=True)
class CommonConfig:
    data_dir: str = ""  # folder with the four *-ubyte.gz files; "" searches the usual places
    train_subset: int = 0  # train on this many images only (0 = all); for quick tries and tests
    seed: int = 0  # seeds the split, initialisation and shuffling
    device: str = "auto"  # auto (cuda if present), cpu or cuda

    def __post_init__(self):
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_train_subset(self.train_subset)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError(
                "device=cuda was asked for but PyTorch sees no CUDA device here. Use device=auto or device=cpu."
            )

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @classmethod
    def from_argv(cls: type[C], argv: list[str], prog: str = "fmae") -> C:
        """The config a step's command line asks for; a UserError before any work if it is wrong."""
        return parse_config(cls, argv, prog)


def check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise UserError(f"{name}={value!r} is not one of {', '.join(choices)}. Pick one of those.")


def check_positive(config: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(config, name)
        if value < 0 or (value == 0 and not allow_zero):
            bound = "0 or more" if allow_zero else "more than 0"
            raise UserError(f"{name}={value} must be {bound}.")


def check_named(config: Any, name: str, example: str) -> None:
    if not getattr(config, name):
        raise UserError(f"{name} must name the registered model, e.g. {name}={example}.")


def parse_bool(text: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise ValueError(text)


def parse_value(kind: type, text: str) -> Any:
    return parse_bool(text) if kind is bool else kind(text)


def field_types(cls: type) -> dict[str, type]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def field_help(cls: type) -> dict[str, str]:
    """Each field's why-comment, from the dataclass and the ones it builds on: `--help` text."""
    help_ = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass) and klass.__module__ != "builtins":
            help_.update(FIELD_COMMENT.findall(inspect.getsource(klass)))
    return help_


def parse_flags(
    types: dict[str, type], argv: list[str], prog: str, help_: dict[str, str] | None = None, unknown_hint: str = ""
) -> dict[str, Any]:
    """`--name value` (or --name=value, --dashed-name) flags, typed: {name: value} for those given."""
    parser = argparse.ArgumentParser(prog=prog, allow_abbrev=False, add_help=True)
    for name, kind in types.items():
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        parser.add_argument(
            *flags,
            dest=name,
            default=None,
            metavar=kind.__name__.upper(),
            help=(help_ or {}).get(name, "").replace("%", "%%"),
        )
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as exc:
        if exc.code == 0:  # --help
            raise
        raise UserError(f"could not read the arguments {argv} of {prog}; flags take the form --name value.") from None
    if unknown:
        raise UserError(
            f"{prog} does not take {' '.join(unknown)!r}{unknown_hint or '. Its parameters are: ' + ', '.join(types)}."
        )
    values = {}
    for name, text in vars(args).items():
        if text is None:
            continue
        try:
            values[name] = parse_value(types[name], text)
        except ValueError:
            raise UserError(f"{name}={text!r} is not a valid {types[name].__name__}.") from None
    return values


def parse_config(cls: type[C], argv: list[str], prog: str = "fmae") -> C:
    """Build cls from `--key value` flags; unknown keys and wrong types are a UserError."""
    return cls(**parse_flags(field_types(cls), argv, prog, field_help(cls)))


def sub_config(config: Any, cls: type[C]) -> C:
    """The part of config that is a cls (a step's config holds its model's fields by name)."""
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


def config_params(config: Any) -> dict[str, Any]:
    """The config as MLflow params, spelled as the command line spells them."""
    return {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in dataclasses.asdict(config).items()}
