"""The registries: one generic :class:`Registry`, and the strategy registry built on it.

:class:`Registry` maps names to entries for strategies (this module), data sets
(:mod:`subsetlab.data.registry`) and models (:mod:`subsetlab.models.registry`): the same name
rule, the same duplicate rule (:class:`~subsetlab.errors.DuplicateNameError`) and the same
unknown-name error (:class:`~subsetlab.errors.UnknownNameError`, with a did-you-mean and the
list of registered names).

Strategies: ``register``, ``get``, ``list_strategies``, ``create``. Built-in and third-party
strategies arrive the same way: through the entry-point group ``subsetlab.strategies``, loaded
lazily on the first lookup; ``@register`` adds a class defined in user code (a script, a
notebook, a test). Set the environment variable ``SUBSETLAB_DISABLE_PLUGIN_AUTOLOAD=1`` to turn
loading off (then register by hand or call :func:`load_plugins` with ``force=True``).
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, TypeVar

from subsetlab.config_base import StrategyConfig, validate
from subsetlab.protocol import SelectionStrategy
from subsetlab.errors import (
    ConfigError,
    DuplicateNameError,
    RegistryError,
    UnknownNameError,
    unknown_name_message,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "AUTOLOAD_ENV",
    "PluginLoadWarning",
    "Registry",
    "StrategyInfo",
    "register",
    "unregister",
    "get",
    "info",
    "list_strategies",
    "make_config",
    "create",
    "load_plugins",
    "defining_module",
    "ensure_registered",
    "parse_override",
]

ENTRY_POINT_GROUP = "subsetlab.strategies"
AUTOLOAD_ENV = "SUBSETLAB_DISABLE_PLUGIN_AUTOLOAD"
LOCAL = "<local>"

_E = TypeVar("_E")
_NAME = re.compile(r"[a-z][a-z0-9_\-]*")


def _qualname(obj: Any) -> str:
    """``module.QualName`` of a registered class or function (for messages)."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class Registry(Generic[_E]):
    """Names mapped to entries of one kind (strategy, dataset, model); thread-safe.

    Args:
        kind: What is registered, in messages: ``"strategy"``, ``"dataset"``, ``"model"``.
        target: The registered object of an entry (its class or function): registering the
            same object twice is a no-op, another object under a taken name raises.
        describe: How an entry already registered is named in the duplicate message
            (default: the module and qualified name of its target).
        before_lookup: Called before every lookup and listing (the strategy registry loads its
            entry points there).
    """

    def __init__(
        self,
        kind: str,
        target: Callable[[_E], Any],
        describe: Callable[[_E], str] | None = None,
        before_lookup: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self.lock = threading.RLock()
        self._target = target
        self._describe = describe or (lambda e: _qualname(target(e)))
        self._before_lookup = before_lookup
        self._entries: dict[str, _E] = {}

    def check_name(self, name: Any, of: Any = None) -> str:
        """``name`` if it is a valid name, else a :class:`~subsetlab.errors.RegistryError`."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            whose = f" of {getattr(of, '__name__', of)!r}" if of is not None else ""
            raise RegistryError(
                f"{self.kind.capitalize()} name {name!r}{whose} is invalid: use lower-case letters, "
                f"digits, '-' and '_', starting with a letter."
            )
        return name

    def add(self, name: str, entry: _E, *, keep_same: bool = False) -> _E:
        """Register ``entry`` under ``name`` and return the entry now registered there.

        The same target again replaces the entry (or keeps the old one with ``keep_same``);
        another target raises :class:`~subsetlab.errors.DuplicateNameError`.
        """
        with self.lock:
            old = self._entries.get(name)
            if old is not None:
                if self._target(old) is not self._target(entry):
                    raise DuplicateNameError(
                        f"A {self.kind} named {name!r} is already registered ({self._describe(old)}); "
                        f"cannot register {_qualname(self._target(entry))} under the same name. "
                        f"Rename one of them."
                    )
                if keep_same:
                    return old
            self._entries[name] = entry
            return entry

    def remove(self, name: str) -> None:
        """Remove ``name`` (no error when it is not registered)."""
        with self.lock:
            self._entries.pop(name, None)

    def find(self, name: str) -> _E | None:
        """The entry of ``name``, or None (no lookup hook, no error)."""
        with self.lock:
            return self._entries.get(name)

    def names(self) -> list[str]:
        """Sorted registered names."""
        if self._before_lookup is not None:
            self._before_lookup()
        with self.lock:
            return sorted(self._entries)

    def get(self, name: str) -> _E:
        """The entry of ``name``.

        Raises:
            UnknownNameError: no entry has that name; the message suggests the closest name and
                lists the registered ones.
        """
        if self._before_lookup is not None:
            self._before_lookup()
        with self.lock:
            entry = self._entries.get(name)
            if entry is None:
                raise UnknownNameError(unknown_name_message(self.kind, name, sorted(self._entries)))
            return entry


class PluginLoadWarning(UserWarning):
    """A strategy plugin could not be loaded; the message names its distribution."""


@dataclass(frozen=True)
class StrategyInfo:
    """Where a registered strategy comes from."""

    name: str
    cls: type
    distribution: str
    version: str
    entry_point: str | None = None

    @property
    def summary(self) -> str:
        """First line of the strategy class's docstring."""
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def _ensure_loaded() -> None:
    if not _plugins_loaded:
        load_plugins()


_strategies: Registry[StrategyInfo] = Registry(
    "strategy",
    target=lambda i: i.cls,
    describe=lambda i: f"{_qualname(i.cls)} from {i.distribution}",
    before_lookup=_ensure_loaded,
)
_plugins_loaded = False


def _check_strategy_class(cls: Any, name: str) -> None:
    if not isinstance(cls, type) or not issubclass(cls, SelectionStrategy):
        raise RegistryError(
            f"Cannot register {cls!r} as {name!r}: a strategy must subclass "
            f"subsetlab.SelectionStrategy."
        )
    config = getattr(cls, "Config", None)
    if not isinstance(config, type) or not issubclass(config, StrategyConfig):
        raise RegistryError(
            f"Cannot register {cls.__name__} as {name!r}: its Config must subclass "
            f"subsetlab.StrategyConfig."
        )
    field = config.model_fields.get("name")
    if field is None or field.default != name:
        raise RegistryError(
            f"Cannot register {cls.__name__} as {name!r}: {config.__name__}.name must default "
            f"to {name!r} (declare `name: Literal[{name!r}] = {name!r}`)."
        )
    if not config.model_config.get("frozen") or config.model_config.get("extra") != "forbid":
        raise RegistryError(
            f"Cannot register {cls.__name__}: {config.__name__} must be frozen with "
            f"extra='forbid' (subclass subsetlab.StrategyConfig and do not override model_config)."
        )


def _add_strategy(cls: Any, name: str | None, source: tuple[str, str, str | None]) -> type:
    n = _strategies.check_name(name or getattr(cls, "name", None), of=cls)
    _check_strategy_class(cls, n)
    _strategies.add(n, StrategyInfo(n, cls, *source), keep_same=source[0] == LOCAL)
    return cls


def register(cls: type | None = None, *, name: str | None = None) -> Any:
    """Register a strategy class of user code under its ``name`` (``@register`` or ``@register()``).

    Registering the same class twice is a no-op; another class under a taken name raises
    :class:`~subsetlab.errors.DuplicateNameError`. A distributed strategy is declared through
    an entry point instead (:func:`load_plugins`).
    """

    def deco(c: type) -> type:
        return _add_strategy(c, name, (LOCAL, "", None))

    return deco(cls) if cls is not None else deco


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (for tests and interactive use)."""
    _strategies.remove(name)


def load_plugins(force: bool = False) -> list[str]:
    """Load the ``subsetlab.strategies`` entry points once; return the names newly registered.

    The entry point's name is the registered name: ``loss-sampling =
    "pkg:LossSampling"`` registers ``LossSampling`` as ``loss-sampling``, and the class's
    ``name`` (and its ``Config``'s ``name`` default) must be that same name. subsetlab's own
    entry points load first, so a plugin can never shadow a built-in.

    Does nothing when autoloading is disabled by ``SUBSETLAB_DISABLE_PLUGIN_AUTOLOAD`` unless
    ``force`` is True. Each of these becomes a :class:`PluginLoadWarning` naming the entry
    point and its distribution, and the plugin is not registered (``import subsetlab`` never
    fails): a plugin that fails to import; an entry point that is not a strategy class; a class
    whose ``name`` differs from its entry point's name; a name already registered by another
    class (a built-in's included).
    """
    global _plugins_loaded
    with _strategies.lock:
        if _plugins_loaded and not force:
            return []
        if os.environ.get(AUTOLOAD_ENV, "").strip() not in ("", "0", "false", "False") and not force:
            return []
        _plugins_loaded = True
        before = set(_strategies.names())
        # subsetlab's own strategies first, so a plugin can never shadow a built-in name
        eps = sorted(
            metadata.entry_points(group=ENTRY_POINT_GROUP),
            key=lambda e: (_dist_name(e) != "subsetlab", e.name),
        )
        for ep in eps:
            _load_entry_point(ep)
        return sorted(set(_strategies.names()) - before)


def _load_entry_point(ep: metadata.EntryPoint) -> None:
    """Register the class of one entry point, or warn (:class:`PluginLoadWarning`) why not."""
    dist = getattr(ep, "dist", None)
    dname, dver = _dist_name(ep), (dist.version if dist is not None else "")
    who = f"Strategy plugin {ep.name!r} ({ep.value}) from distribution {dname!r} {dver}".rstrip()
    known = set(_strategies.names())
    try:
        try:
            obj = ep.load()
        finally:  # classes the module registered itself (@register) come from its distribution
            added = _claim(set(_strategies.names()) - known, dname, dver)
        problem = _entry_point_problem(ep.name, obj, known)
        if problem is not None:
            # a class the module registered itself under another name stays out too: the
            # entry point's name is the registered name
            for n in added:
                if _strategies.get(n).cls is obj:
                    unregister(n)
            warnings.warn(f"{who} was not registered: {problem}", PluginLoadWarning, stacklevel=3)
            return
        _add_strategy(obj, ep.name, (dname, dver, ep.value))
    except DuplicateNameError as exc:
        warnings.warn(f"{who} was not registered: {exc}", PluginLoadWarning, stacklevel=3)
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not break subsetlab
        warnings.warn(
            f"{who} failed to load: {type(exc).__name__}: {exc}",
            PluginLoadWarning,
            stacklevel=3,
        )


def _claim(names: set[str], dist: str, version: str) -> set[str]:
    """Record the strategies ``names``, registered while a plugin loaded, as its distribution's."""
    for n in names:
        _strategies.add(n, StrategyInfo(n, _strategies.get(n).cls, dist, version))
    return names


def _entry_point_problem(ep_name: str, obj: Any, before: set[str]) -> str | None:
    """Why the class ``obj`` cannot be registered under its entry point's name, or None."""
    if not isinstance(obj, type) or not issubclass(obj, SelectionStrategy):
        return (
            f"the entry point must name a subsetlab.SelectionStrategy subclass (module:Class). "
            f"Got {obj!r:.80} instead."
        )
    cls_name = getattr(obj, "name", None)
    if cls_name != ep_name:
        return (
            f"the entry point is named {ep_name!r} but {obj.__qualname__}.name is {cls_name!r}; "
            f"the entry point's name is the name the strategy is registered under. Rename the "
            f"entry point to {cls_name!r} (in [project.entry-points.\"{ENTRY_POINT_GROUP}\"]) "
            f"or the strategy (its name and its Config's name) to {ep_name!r}."
        )
    old = _strategies.find(ep_name)
    if old is not None and old.cls is not obj and ep_name in before:
        return (
            f"a strategy named {ep_name!r} is already registered ({_qualname(old.cls)} from "
            f"{old.distribution}). Rename the plugin's strategy and its entry point."
        )
    return None


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "unknown distribution"


def list_strategies() -> list[str]:
    """Sorted names of every registered strategy (loads plugins on first use)."""
    return _strategies.names()


def info(name: str | None = None) -> StrategyInfo | list[StrategyInfo]:
    """:class:`StrategyInfo` of ``name``, or of every strategy when ``name`` is None."""
    if name is None:
        return [_strategies.get(n) for n in _strategies.names()]
    return _strategies.get(name)


def get(name: str) -> type:
    """The strategy class registered under ``name``.

    Raises:
        UnknownNameError: no strategy has that name (a ``KeyError`` and a ``ConfigError``).
    """
    return _strategies.get(name).cls


def defining_module(name: str) -> str | None:
    """The module a fresh process must import to register the strategy ``name``.

    None for a strategy from an entry point (every process loads those), for one defined in
    ``__main__``, and for an unknown name (the process that runs it reports that itself).
    """
    try:
        entry = _strategies.get(name)
    except UnknownNameError:
        return None
    if entry.distribution != LOCAL or entry.cls.__module__ == "__main__":
        return None
    return entry.cls.__module__


def ensure_registered(name: str, module: str | None) -> None:
    """Import ``module`` (from :func:`defining_module`) unless ``name`` is registered already."""
    if module and module != "__main__" and name not in list_strategies():
        import importlib

        importlib.import_module(module)


_OVERRIDE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*(?:\[(.*)\])?\s*$", re.S)


def _parse_value(text: str) -> Any:
    import json

    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return json.loads(t)
    except (ValueError, RecursionError):  # not JSON, or nested too deeply: a bare string
        return t


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return parts


def parse_override(text: str) -> dict[str, Any]:
    """Parse ``"crest[tau=0.05,b=3]"`` into ``{"name": "crest", "tau": 0.05, "b": 3}``.

    Values are read as JSON where possible (numbers, lists, quoted strings), ``true``/``false``
    and ``none`` case-insensitively, and as bare strings otherwise.
    """
    m = _OVERRIDE.match(text)
    if not m:
        raise ConfigError(
            f"Cannot parse strategy {text!r}: expected NAME or NAME[key=value,...], e.g. "
            f"crest[tau=0.05,b=3]."
        )
    out: dict[str, Any] = {"name": m.group(1)}
    body = m.group(2)
    if body:
        for part in _split_top(body):
            if "=" not in part:
                raise ConfigError(
                    f"Cannot parse {part.strip()!r} in {text!r}: each override must be key=value."
                )
            k, v = part.split("=", 1)
            out[k.strip()] = _parse_value(v)
    return out


def make_config(spec: str | dict[str, Any] | StrategyConfig, **overrides: Any) -> StrategyConfig:
    """Validate a strategy config given as a name, ``"name[k=v]"``, a mapping or an instance.

    Raises:
        UnknownNameError: the name is not registered.
        ConfigError: a parameter is unknown or out of range.
    """
    if isinstance(spec, StrategyConfig):
        data = spec.model_dump()
    elif isinstance(spec, str):
        data = parse_override(spec)
    elif isinstance(spec, dict):
        data = dict(spec)
    else:
        raise ConfigError(
            f"A strategy must be given as a name, 'name[key=value]', a mapping with a 'name' "
            f"key or a StrategyConfig. Got {type(spec).__name__} instead."
        )
    data.update(overrides)
    name = data.get("name")
    if not isinstance(name, str):
        raise ConfigError(
            f"A strategy config needs a 'name' string naming a registered strategy. Got "
            f"{name!r} instead; see `subsetlab list`."
        )
    cls = get(name)
    # named as the user wrote it (the class name for Python readers)
    return validate(cls.Config, data, f"strategy {name!r} ({cls.Config.__name__})")


def create(spec: str | dict[str, Any] | StrategyConfig, **overrides: Any) -> Any:
    """Instantiate a strategy: ``create("crest", tau=0.05)`` or ``create({"name": "crest"})``."""
    config = make_config(spec, **overrides)
    return get(config.name)(config)
