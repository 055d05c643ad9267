"""The one small exception tree of subsetlab.

Every error the library raises on purpose derives from :class:`SubsetlabError` and, where it
fits, from the matching built-in (``ValueError``, ``KeyError``, ``ImportError``...), so callers
can catch either the library's class or the built-in they already expect.
"""

from __future__ import annotations

__all__ = [
    "SubsetlabError",
    "ConfigError",
    "RegistryError",
    "DuplicateNameError",
    "DuplicateStrategyError",
    "UnknownNameError",
    "UnknownStrategyError",
    "DataError",
    "MissingDataError",
    "SelectionError",
    "TrainingDiverged",
    "RunTimeout",
    "StrategyFailure",
    "CheckpointError",
    "MissingDependencyError",
    "DistributedError",
    "ClusterConnectionError",
    "DaskNotInstalledError",
    "missing_dependency",
    "unknown_name_message",
]


class SubsetlabError(Exception):
    """Base class of every error subsetlab raises on purpose."""


class ConfigError(SubsetlabError, ValueError):
    """A configuration (strategy, trainer, data, model, suite) failed validation.

    The message names the field, the value received, the rule and how to fix it.
    ``errors`` holds pydantic's structured error list when the error came from pydantic.
    """

    def __init__(self, message: str, errors: list | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class RegistryError(SubsetlabError, ValueError):
    """Base class of the registries' errors (strategies, datasets, models)."""


class DuplicateNameError(RegistryError):
    """A name was registered twice (a strategy, dataset or model)."""


class UnknownNameError(RegistryError, ConfigError, KeyError):
    """A name is not registered (a strategy, dataset or model); the message lists the known names.

    Also a :class:`ConfigError`: a name is part of a configuration, so a caller validating
    configs catches one exception class for every bad value, the name included.
    """

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


#: The names these errors had when only the strategy registry raised them.
DuplicateStrategyError = DuplicateNameError
UnknownStrategyError = UnknownNameError


class DataError(SubsetlabError, ValueError):
    """A dataset is malformed (bad labels, non-finite features, empty split...)."""


class MissingDataError(DataError, FileNotFoundError):
    """Dataset files are missing; the message says where we looked and how to get them."""


class SelectionError(SubsetlabError, ValueError):
    """A strategy returned an invalid selection (indices out of range, bad weights...)."""


class TrainingDiverged(SubsetlabError, ArithmeticError):
    """The training loss became NaN or infinite."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class RunTimeout(SubsetlabError, TimeoutError):
    """A run exceeded ``TrainerConfig.max_seconds``."""


class StrategyFailure(SubsetlabError, RuntimeError):
    """An exception raised inside a strategy hook, re-raised naming the strategy."""

    def __init__(self, message: str, strategy: str) -> None:
        super().__init__(message)
        self.strategy = strategy


class CheckpointError(SubsetlabError, ValueError):
    """A checkpoint file could not be loaded safely (tampered with, corrupt or foreign).

    Checkpoints are read with ``torch.load(weights_only=True)``: a file that names any other
    Python object (a crafted ``__reduce__``, a NumPy array in a strategy's state) is refused
    before anything in it is called; nothing from it is used.
    """


class MissingDependencyError(SubsetlabError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class DaskNotInstalledError(MissingDependencyError):
    """Dask distributed, needed by :class:`~subsetlab.bench.dask_executor.DaskExecutor`, is not installed."""


class DistributedError(SubsetlabError, RuntimeError):
    """A distributed run could not start, a rank failed, or the ranks did not finish in time."""


class ClusterConnectionError(SubsetlabError, OSError):
    """The Dask scheduler at the given address could not be reached."""


def unknown_name_message(kind: str, name: object, known: list[str]) -> str:
    """``"Unknown <kind> 'x'. Did you mean 'y'? Registered <kind>s: a, b."`` for a registry miss."""
    import difflib

    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    kinds = kind[:-1] + "ies" if kind.endswith("y") and kind[-2:-1] not in "aeiou" else kind + "s"
    return f"Unknown {kind} {name!r}.{hint} Registered {kinds}: {', '.join(known) if known else '(none)'}."


def missing_dependency(module: str, extra: str) -> MissingDependencyError:
    """Build the error raised when the optional ``module`` from extra ``extra`` is missing."""
    return MissingDependencyError(
        f"This feature needs the optional dependency {module!r}. "
        f"Install it with: pip install 'subsetlab[{extra}]'"
    )
