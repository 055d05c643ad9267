"""The strategy registry: ``register``, ``get``, ``list_strategies``, ``create``.

Built-in and third-party strategies arrive the same way: through the entry-point group
``subsetlab.strategies``, loaded lazily on the first lookup. Set the environment variable
``SUBSETLAB_DISABLE_PLUGIN_AUTOLOAD=1`` to turn that off (then register by hand or call
:func:`load_plugins` with ``force=True``).
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from subsetlab.config import StrategyConfig, validate
from subsetlab.errors import (
    ConfigError,
    DuplicateStrategyError,
    RegistryError,
    UnknownStrategyError,
    unknown_name_message,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "AUTOLOAD_ENV",
    "PluginLoadWarning",
    "StrategyInfo",
    "register",
    "unregister",
    "get",
    "info",
    "list_strategies",
    "make_config",
    "create",
    "load_plugins",
    "parse_override",
]

ENTRY_POINT_GROUP = "subsetlab.strategies"
AUTOLOAD_ENV = "SUBSETLAB_DISABLE_PLUGIN_AUTOLOAD"
LOCAL = "<local>"


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


_lock = threading.RLock()
_registry: dict[str, StrategyInfo] = {}
_plugins_loaded = False
_loading_dist: tuple[str, str, str] | None = None  # (distribution, version, entry point) during load


def _check_strategy_class(cls: Any, name: str) -> None:
    from subsetlab.protocol import SelectionStrategy

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


def register(cls: type | None = None, *, name: str | None = None) -> Any:
    """Register a strategy class under its ``name`` (usable as ``@register`` or ``@register()``).

    Registering the same class twice is a no-op; another class under a taken name raises
    :class:`~subsetlab.errors.DuplicateStrategyError`.
    """

    def deco(c: type) -> type:
        n = name or getattr(c, "name", None)
        if not isinstance(n, str) or not re.fullmatch(r"[a-z][a-z0-9_\-]*", n):
            raise RegistryError(
                f"Strategy name {n!r} of {getattr(c, '__name__', c)!r} is invalid: use lower-case "
                f"letters, digits, '-' and '_', starting with a letter."
            )
        _check_strategy_class(c, n)
        with _lock:
            old = _registry.get(n)
            if old is not None:
                if old.cls is c:
                    if _loading_dist is not None and old.distribution == LOCAL:
                        _registry[n] = StrategyInfo(n, c, _loading_dist[0], _loading_dist[1])
                    return c
                raise DuplicateStrategyError(
                    f"A strategy named {n!r} is already registered ({old.cls.__module__}."
                    f"{old.cls.__qualname__} from {old.distribution}); cannot register "
                    f"{c.__module__}.{c.__qualname__} under the same name. Rename one of them."
                )
            # the entry point itself is recorded by load_plugins for its own target only: a
            # plugin module may import (and so register) other strategies while it loads
            src = _loading_dist[:2] if _loading_dist is not None else (LOCAL, "")
            _registry[n] = StrategyInfo(n, c, *src)
        return c

    return deco(cls) if cls is not None else deco


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (for tests and interactive use)."""
    with _lock:
        _registry.pop(name, None)


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
    global _plugins_loaded, _loading_dist
    with _lock:
        if _plugins_loaded and not force:
            return []
        if os.environ.get(AUTOLOAD_ENV, "").strip() not in ("", "0", "false", "False") and not force:
            return []
        _plugins_loaded = True
        before = set(_registry)
        # subsetlab's own strategies first, so a plugin can never shadow a built-in name
        eps = sorted(
            metadata.entry_points(group=ENTRY_POINT_GROUP),
            key=lambda e: (_dist_name(e) != "subsetlab", e.name),
        )
        for ep in eps:
            dist = getattr(ep, "dist", None)
            dname = _dist_name(ep)
            dver = dist.version if dist is not None else ""
            who = f"Strategy plugin {ep.name!r} ({ep.value}) from distribution {dname!r} {dver}".rstrip()
            _loading_dist = (dname, dver, ep.value)
            added_here = set(_registry)
            try:
                obj = ep.load()
                problem = _entry_point_problem(ep.name, obj, added_here)
                if problem is None:
                    register(obj, name=ep.name)
                    _registry[ep.name] = StrategyInfo(ep.name, obj, dname, dver, ep.value)
                else:
                    # a class the module registered itself under another name while it loaded
                    # stays out too: the entry point's name is the registered name
                    for n in set(_registry) - added_here:
                        if _registry[n].cls is obj:
                            del _registry[n]
                    warnings.warn(f"{who} was not registered: {problem}", PluginLoadWarning, stacklevel=2)
            except DuplicateStrategyError as exc:
                warnings.warn(f"{who} was not registered: {exc}", PluginLoadWarning, stacklevel=2)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break subsetlab
                warnings.warn(
                    f"{who} failed to load: {type(exc).__name__}: {exc}",
                    PluginLoadWarning,
                    stacklevel=2,
                )
            finally:
                _loading_dist = None
        return sorted(set(_registry) - before)


def _entry_point_problem(ep_name: str, obj: Any, before: set[str]) -> str | None:
    """Why the class ``obj`` cannot be registered under its entry point's name, or None."""
    from subsetlab.protocol import SelectionStrategy

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
    old = _registry.get(ep_name)
    if old is not None and old.cls is not obj and ep_name in before:
        return (
            f"a strategy named {ep_name!r} is already registered ({old.cls.__module__}."
            f"{old.cls.__qualname__} from {old.distribution}). Rename the plugin's strategy and "
            f"its entry point."
        )
    return None


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "unknown distribution"


def _ensure_loaded() -> None:
    if not _plugins_loaded:
        load_plugins()


def list_strategies() -> list[str]:
    """Sorted names of every registered strategy (loads plugins on first use)."""
    _ensure_loaded()
    return sorted(_registry)


def info(name: str | None = None) -> StrategyInfo | list[StrategyInfo]:
    """:class:`StrategyInfo` of ``name``, or of every strategy when ``name`` is None."""
    _ensure_loaded()
    if name is None:
        return [_registry[n] for n in sorted(_registry)]
    return _lookup(name)


def _lookup(name: str) -> StrategyInfo:
    _ensure_loaded()
    try:
        return _registry[name]
    except KeyError:
        raise UnknownStrategyError(unknown_name_message("strategy", name, sorted(_registry))) from None


def get(name: str) -> type:
    """The strategy class registered under ``name``."""
    return _lookup(name).cls


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
        UnknownStrategyError: the name is not registered.
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
