"""Every option of the server and its store, in one place: ``Options``.

Each option is one field, declared with ``option()``: its type, its default, the check of
its range, one line of help, and where the switch puts the server its default there. The
rest is derived from the fields:

- ``AttemptAwareServer(..., **options)`` takes them as keywords (typed by ``ServerArguments``)
  and keeps them as ``server.options``; ``AttemptAwareDataStore``, the server's parts and
  verl's daemon read that object;
- ``LIGHTNING_ATTEMPTS_<OPTION>`` variables (``switch.variables``, which also holds the one
  precedence) and ``lightning-attempts serve``'s flags (``cli``), both parsed by ``parse``.

A new option is a field here and a key of ``ServerArguments`` (a test checks that they
agree), plus the code that uses it.
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, TypedDict, TypeVar

from typing_extensions import Unpack

from .errors import OptionError
from .keys import KEY_ENV, validate_key

__all__ = [
    "DEFAULTS",
    "STALE_POLICIES",
    "Clock",
    "OptionArguments",
    "OptionSpec",
    "Options",
    "ServerArguments",
    "StalePolicy",
    "annotation",
    "flagged",
    "option_attributes",
    "parse",
    "settable",
    "spec",
]

StalePolicy = Literal["reject", "salvage"]
STALE_POLICIES: tuple[StalePolicy, ...] = typing.get_args(StalePolicy)
Clock = Callable[[], float]
"""A monotonic clock, in seconds."""
Check = Callable[[str, Any], Any]
"""``check(name, value)``: the value to keep, or ``OptionError`` naming the option."""

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """What is known of an option beyond its type and default."""

    help: str
    check: Check | None = None
    variable: bool = True
    """Settable as ``LIGHTNING_ATTEMPTS_<OPTION>`` and as a ``serve`` flag."""
    flag: str | None = None
    """The ``serve`` flag when not derived from the name (``--task-timeout``)."""
    switch_default: Any = _UNSET
    """The default where the switch, ``install()``, verl's daemon or ``serve`` build the server, if it differs."""
    serve_default: Any = _UNSET
    """The default of ``lightning-attempts serve`` alone, if it differs from the switch's."""
    fallback_variable: str | None = None
    """A variable read, where ``LIGHTNING_ATTEMPTS_<OPTION>`` is unset, by the servers built for the user
    (``switch.variables.resolve``): ``AGL_KEY`` for ``api_key``."""

    @property
    def has_switch_default(self) -> bool:
        return self.switch_default is not _UNSET

    @property
    def has_serve_default(self) -> bool:
        return self.serve_default is not _UNSET


def option(default: Any, help: str, **spec: Any) -> Any:
    """A field of ``Options`` with its default and its ``OptionSpec`` (``repr=False``: left out of the ``repr``)."""
    shown = spec.pop("repr", True)
    return field(default=default, metadata={"spec": OptionSpec(help, **spec)}, repr=shown)


# -- checks -------------------------------------------------------------------


def one_of(choices: tuple[Any, ...]) -> Check:
    def check(name: str, value: Any) -> Any:
        if value not in choices:
            raise OptionError(f"{name} must be one of {choices}, not {value!r}")
        return value

    return check


def positive(none: str | None = None) -> Check:
    """A number above 0; or, with ``none`` (what None means), None."""

    def check(name: str, value: Any) -> Any:
        if value is None and none is not None:
            return value
        if value is None or not value > 0:
            raise OptionError(f"{name} must be positive" + (f" (or None for {none})" if none else ""))
        return value

    return check


def at_least_one(none: str) -> Check:
    def check(name: str, value: Any) -> Any:
        if value is not None and not value >= 1:
            raise OptionError(f"{name} must be at least 1 (or None for {none})")
        return value

    return check


def not_negative(name: str, value: Any) -> Any:
    if value < 0:
        raise OptionError(f"{name} must not be negative")
    return value


def positive_seconds(name: str, value: Any) -> Any:
    if not (math.isfinite(value) and value > 0):
        raise OptionError(f"{name} must be a finite number of seconds above 0, not {value!r}")
    return value


def finite_seconds(name: str, value: Any) -> Any:
    if not (math.isfinite(value) and value >= 0):
        raise OptionError(f"{name} must be a finite number of seconds, 0 or more")
    return value


def key(name: str, value: Any) -> Any:
    try:
        return validate_key(value)
    except ValueError as error:
        raise OptionError(str(error)) from None


# -- the options --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Options:
    """The options of ``AttemptAwareServer`` and its store, checked when built (``OptionError`` names the option).

    ``api_key`` is kept as ``None`` when empty, and left out of the ``repr``.
    """

    task_timeout_seconds: float = option(
        300.0,
        "Seconds a claim may live before its task is requeued (verl: llm_timeout_seconds).",
        check=positive_seconds,
        variable=False,
        flag="--task-timeout",
    )
    stale_policy: StalePolicy = option(
        "reject",
        "What to do with the result of a superseded attempt: reject drops it, salvage stores it if the task has none.",
        check=one_of(STALE_POLICIES),
    )
    require_attempt_id: bool = option(False, "Refuse (400) results that carry no attempt id (old clients).")
    unresponsive_seconds: float | None = option(
        None,
        "Lease: requeue a claim whose worker heartbeats (the shim's) after this much silence; a worker that never "
        "heartbeats keeps its claim until the task timeout. None: no leases.",
        check=positive(none="no leases"),
        switch_default=60.0,
    )
    max_claims: int | None = option(
        None,
        "Complete a task empty, marked, when its claim of this number ends without a result, so that its batch "
        "can finish (a worker killed on every claim of the task, say). Claims their workers gave back unrun "
        "(no resources, skipped) do not count. None: no limit.",
        check=at_least_one(none="no limit"),
        switch_default=8,
    )
    task_budget: float | None = option(
        None,
        "Task timeouts a task may be worked on (held by its claims, or waiting while no claim at all is in flight; "
        "never waiting behind other work): a claim whose worker heartbeats is kept past the task timeout while the "
        "worker lives, up to this; then the task is completed empty, marked. None: every claim ends at the task "
        "timeout, and a task is claimed again until max_claims.",
        check=at_least_one(none="no budget"),
        switch_default=8.0,
    )
    retry_failed: int = option(
        0,
        "Requeue a task whose live attempt posts a failed result (no reward, no triplets) up to this many times.",
        check=not_negative,
    )
    max_remembered: int = option(
        100_000,
        "Finished tasks remembered to answer late results (duplicate, already_completed).",
        check=not_negative,
    )
    max_body_bytes: int | None = option(
        64 * 2**20,
        "Larger submissions and heartbeats are refused (413), read no further than this. None: no limit.",
        check=positive(none="no limit"),
    )
    max_poll_wait: float = option(
        20.0,
        "Longest a long poll (GET /task?wait=S) is held, in seconds; 0: answer at once.",
        check=finite_seconds,
    )
    api_key: str | None = option(
        None,
        "Answer 401 to requests without this key (Authorization: Bearer, or x-api-key). None: open. Prefer a "
        "variable to a flag: a command line is visible to other users.",
        check=key,
        repr=False,
        fallback_variable=KEY_ENV,
    )
    rewrite_loopback_endpoints: bool | None = option(
        None,
        "Serve a loopback LLM endpoint in the resources as the host each worker reached this server by, so that "
        "workers on other machines reach it. Unset: off, but verl's daemon turns it on; false: off there too.",
    )
    producer_api: bool = option(
        False,
        "Serve the producer routes (POST /tasks, /resources, /rollouts/take, /rollouts/wait, /tasks/cancel; GET "
        "/rollouts/ID), so that a trainer in another process can drive this server (RemoteServer). Off where the "
        "trainer owns its server (verl's daemon), on for lightning-attempts serve.",
        serve_default=True,
    )
    llm_drain_timeout_seconds: float = option(
        120.0,
        "verl's daemon: longest wait, at a step's end, for the LLM calls still in flight (of attempts no longer "
        "needed) to end before vLLM sleeps; those left are then cut (vLLM may still generate them). 0: cut at once.",
        check=finite_seconds,
    )
    llm_trainer_limits: bool = option(
        True,
        "verl's daemon: hold a training step's LLM calls to the trainer's max_prompt_length (a longer prompt is "
        "refused with context_length_exceeded: its row would be dropped) and max_response_length (max_tokens capped). "
        "False: only to the model's context, and such prompts are generated as upstream generates them.",
    )
    clock: Clock = option(time.monotonic, "Monotonic clock of claim deadlines (tests inject one).", variable=False)

    def __post_init__(self) -> None:
        for each in dataclasses.fields(self):
            value = getattr(self, each.name)
            if value is not each.default:  # a default is of its type: no need to load pydantic for it
                value = _of_type(each.name, value)
            check = spec(each.name).check
            object.__setattr__(self, each.name, value if check is None else check(each.name, value))

    def replace(self, **changes: Unpack[OptionArguments]) -> Options:
        """A copy with ``changes``, checked."""
        return dataclasses.replace(self, **changes)


class ServerArguments(TypedDict, total=False):
    """``AttemptAwareServer``'s keyword options (``task_timeout_seconds`` is upstream's third argument)."""

    stale_policy: StalePolicy
    require_attempt_id: bool
    unresponsive_seconds: float | None
    max_claims: int | None
    task_budget: float | None
    retry_failed: int
    max_remembered: int
    max_body_bytes: int | None
    max_poll_wait: float
    api_key: str | None
    rewrite_loopback_endpoints: bool | None
    producer_api: bool
    llm_drain_timeout_seconds: float
    llm_trainer_limits: bool
    clock: Clock


class OptionArguments(ServerArguments, total=False):
    """Every field of ``Options``, as keywords."""

    task_timeout_seconds: float


T = TypeVar("T", bound=type)


def option_attributes(
    *, hidden: tuple[str, ...] = (), settable: tuple[str, ...] = (), document: bool = False
) -> Callable[[T], T]:
    """A class decorator: each option but ``hidden`` becomes a read-only attribute over ``self.options``
    (``settable`` ones can be assigned, which replaces ``self.options``); ``document``: the class docstring
    lists every option with its default and help."""

    def decorate(cls: T) -> T:
        lines: list[str] = []
        for name, each in _specs().items():
            if name not in hidden:
                setattr(cls, name, property(_getter(name), _setter(name) if name in settable else None, doc=each.help))
            default = getattr(DEFAULTS, name)
            shown = getattr(default, "__qualname__", None) or repr(default)
            lines.append(f"    - ``{name}`` (default ``{shown}``): {each.help}")
        if document:
            cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n\n    Options:\n\n" + "\n".join(lines) + "\n"
        return cls

    return decorate


def _getter(name: str) -> Callable[[Any], Any]:
    return lambda self: getattr(self.options, name)


def _setter(name: str) -> Callable[[Any, Any], None]:
    def assign(self: Any, value: Any) -> None:
        self.options = self.options.replace(**{name: value})

    return assign


def spec(name: str) -> OptionSpec:
    """The ``OptionSpec`` of the option ``name``."""
    return _specs()[name]


@cache
def _specs() -> dict[str, OptionSpec]:
    return {each.name: each.metadata["spec"] for each in dataclasses.fields(Options)}


def settable() -> Iterator[tuple[str, OptionSpec]]:
    """The options settable as ``LIGHTNING_ATTEMPTS_<OPTION>`` variables (and flags), in declaration order."""
    return ((name, each) for name, each in _specs().items() if each.variable)


def flagged() -> Iterator[tuple[str, OptionSpec]]:
    """The options ``lightning-attempts serve`` has a flag for, in declaration order."""
    return ((name, each) for name, each in _specs().items() if each.variable or each.flag)


@cache
def annotation(name: str) -> Any:
    """The type of option ``name``."""
    return typing.get_type_hints(Options)[name]


def parse(name: str, raw: str) -> Any:
    """The value of option ``name`` written as text (a variable's value, a flag), checked; ``OptionError`` otherwise.

    Numbers and booleans (``1``, ``true``, ``yes``) parse as such; ``none`` or an empty value is
    ``None`` where the option takes it.
    """
    from pydantic import TypeAdapter, ValidationError  # not needed to list the options, e.g. for --help

    adapter: TypeAdapter[Any] = TypeAdapter(annotation(name))
    if raw.strip().lower() in ("", "none", "null") and _accepts_none(adapter):
        value = None
    else:
        try:
            value = adapter.validate_json(raw)  # numbers, true/false
        except ValidationError:
            try:
                value = adapter.validate_python(raw.strip())  # plain words: salvage, yes
            except ValidationError as error:
                raise OptionError("; ".join(str(e["msg"]) for e in error.errors())) from None
    check = spec(name).check
    return value if check is None else check(name, value)


def _of_type(name: str, value: Any) -> Any:
    """``value`` if it is of option ``name``'s type (an int for a float is taken as one); else ``OptionError``."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(annotation(name)).validate_python(value, strict=True)
    except ValidationError as error:
        wanted = " or ".join(sorted({str(e["msg"]).removeprefix("Input should be ") for e in error.errors()}))
        raise OptionError(f"{name} must be {wanted}, not {value!r}") from None


def _accepts_none(adapter: Any) -> bool:
    from pydantic import ValidationError

    try:
        adapter.validate_python(None)
    except ValidationError:
        return False
    return True


DEFAULTS = Options()
"""Every option at its default."""
