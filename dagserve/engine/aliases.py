"""Served names: a model (or pipeline) that also answers under another name.

KServe addresses a predictor as ``/v2/models/<InferenceService name>/...`` (an InferenceGraph
step, for one, calls its service that way), while the repository names the pipeline after its
directory. ``--model-alias SERVED=MODEL`` (``ServerOptions.model_aliases``) bridges the two
without copying the model: requests, metadata, readiness, config and statistics for ``SERVED``
are answered by ``MODEL``'s newest ready version (the replies carry ``MODEL``'s name; the
metrics count under it). Nothing is loaded twice and nothing is renamed. A model really named
``SERVED`` wins over the alias; an alias of an alias is refused, so a lookup takes one step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..errors import ConfigError, DagserveError
from ..repository import confine

__all__ = ["check_aliases", "parse_aliases"]


def parse_aliases(items: Iterable[str]) -> dict[str, str]:
    """``["served=model", ...]`` (the CLI's form; each item may hold several, comma-separated)
    as a checked mapping.

    Raises:
        ConfigError: an item without ``=``, or what :func:`check_aliases` refuses.
    """
    aliases: dict[str, str] = {}
    for item in items:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            served, sep, model = part.partition("=")
            if not sep:
                raise ConfigError(f"model alias '{part}': expected SERVED_NAME=MODEL")
            served, model = served.strip(), model.strip()
            if served in aliases and aliases[served] != model:
                raise ConfigError(f"model alias '{served}' is given twice ('{aliases[served]}' and '{model}')")
            aliases[served] = model
    return check_aliases(aliases)


def check_aliases(aliases: Mapping[str, str]) -> dict[str, str]:
    """``aliases`` as a plain dict if every name is a usable model name, no alias names itself,
    and no alias points at another alias.

    Raises:
        ConfigError: naming the alias and the problem.
    """
    checked: dict[str, str] = {}
    for served, model in aliases.items():
        try:
            confine.check_model_name(served, field="served name")
            confine.check_model_name(model, field=f"model of served name '{served}'")
        except DagserveError as exc:
            raise ConfigError(f"model alias: {exc}") from None
        if served == model:
            raise ConfigError(f"model alias '{served}={model}' names the model itself")
        if model in aliases:
            raise ConfigError(f"model alias '{served}={model}': '{model}' is itself an alias (of "
                              f"'{aliases[model]}'); name the model")
        checked[served] = model
    return checked
