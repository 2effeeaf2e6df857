"""The lifecycle of one app, as data: states, events, effects, and one step function.

:func:`step` maps (state, event) to (new state, effects). It does no I/O and reads no
clock, so every transition is unit-tested without a process
(``tests/test_lifecycle.py``); the supervisor (:mod:`.supervisor`) feeds it events and
carries out the effects.

The phases, as the user sees them (the progress page polls the phase)::

    stopped --Requested--> starting --Ready--> running --Exited--> stopped
                              |                  |
                              +--StartFailed/Exited--> failed --ProblemShown--> stopped

``cleaning`` is orthogonal: the previous run's processes are still being stopped.
A start asked for meanwhile waits for ``Cleaned`` (``start_after_cleaning``), so two
runs never overlap. ``generation`` counts starts; the effects of a start that a
restart or a failure overtook are dropped (its Ready and StartFailed no longer match).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..problems import Problem


class Phase(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    STOPPING = "stopping"  # the supervisor itself is shutting down


@dataclass(frozen=True)
class State:
    phase: Phase = Phase.STOPPED
    generation: int = 0
    cleaning: bool = False
    start_after_cleaning: bool = False
    problem: Problem | None = None
    note: str = ""  # shown on the progress page: why the app starts again

    @property
    def refused(self) -> bool:
        """A permanent problem (configuration): every request gets its page."""
        return self.problem is not None and self.problem.permanent


# ---------------------------------------------------------------- events
@dataclass(frozen=True)
class Requested:
    """A request for the app's page reached the supervisor (not a progress probe)."""


@dataclass(frozen=True)
class ProblemShown:
    """A page showed the problem; a passing one is shown once."""


@dataclass(frozen=True)
class Ready:
    generation: int


@dataclass(frozen=True)
class StartFailed:
    generation: int
    problem: Problem


@dataclass(frozen=True)
class Exited:
    """The app's main process ended with ``description`` ("exit code 1", "signal 9")."""

    description: str
    problem: Problem  # what to show if it ended during start-up


@dataclass(frozen=True)
class Relaunch:
    """The app is to start again now, with new URL parameters."""


@dataclass(frozen=True)
class Cleaned:
    """The previous run's processes are gone."""


@dataclass(frozen=True)
class Refused:
    """Site policy (an invalid configuration, a disabled app): never start."""

    problem: Problem


@dataclass(frozen=True)
class Shutdown:
    """A signal, or the Jupyter server went away."""


Event = (
    Requested
    | ProblemShown
    | Ready
    | StartFailed
    | Exited
    | Relaunch
    | Cleaned
    | Refused
    | Shutdown
)


# ---------------------------------------------------------------- effects
@dataclass(frozen=True)
class StartRun:
    """Look up the programs, prepare and spawn the app, and wait until it answers."""

    generation: int


@dataclass(frozen=True)
class HandOver:
    """The app answers: its socket replaces ours, so the next request reaches it."""


@dataclass(frozen=True)
class TakeSocketBack:
    """Serve our pages on the launch socket again."""


@dataclass(frozen=True)
class StopProcesses:
    """Stop the run's whole process tree and remove its files; then ``Cleaned``."""


@dataclass(frozen=True)
class Exit:
    """Stop everything, remove the runtime directory, end the supervisor."""


@dataclass(frozen=True)
class Log:
    message: str


Effect = StartRun | HandOver | TakeSocketBack | StopProcesses | Exit | Log
Step = tuple[State, tuple[Effect, ...]]


# ---------------------------------------------------------------- transitions
def _start(state: State) -> Step:
    if state.cleaning:
        return replace(state, phase=Phase.STARTING, problem=None, start_after_cleaning=True), ()
    generation = state.generation + 1
    started = replace(state, phase=Phase.STARTING, problem=None, generation=generation)
    return started, (StartRun(generation),)


def _ready(state: State, event: Ready) -> Step:
    if event.generation != state.generation:
        return state, ()
    return replace(state, phase=Phase.RUNNING, note=""), (HandOver(),)


def _start_failed(state: State, event: StartFailed) -> Step:
    if event.generation != state.generation:
        return state, ()
    failed = replace(state, phase=Phase.FAILED, problem=event.problem, cleaning=True)
    return failed, (Log(event.problem.summary), StopProcesses())


def _exited_starting(state: State, event: Exited) -> Step:
    failed = replace(state, phase=Phase.FAILED, problem=event.problem, cleaning=True)
    return failed, (Log(event.problem.summary), StopProcesses())


def _exited_running(state: State, event: Exited) -> Step:
    stopped = replace(
        state,
        phase=Phase.STOPPED,
        cleaning=True,
        note=f"The previous session ended ({event.description}).",
    )
    log = Log(f"exited ({event.description}); the next request starts it again")
    return stopped, (log, TakeSocketBack(), StopProcesses())


def _problem_shown(state: State, event: ProblemShown) -> Step:
    if state.refused:
        return state, ()
    return replace(state, phase=Phase.STOPPED), ()


def _relaunch(state: State, event: Relaunch) -> Step:
    """Stop now and start again: the socket is ours again at once, so the next request
    already sees the progress page; the start waits for the old run's clean-up."""
    generation = state.generation + 1  # a start under way gives up
    if state.cleaning:
        return replace(state, generation=generation, start_after_cleaning=True), ()
    restarted = replace(
        state,
        phase=Phase.STARTING,
        generation=generation,
        cleaning=True,
        start_after_cleaning=True,
        problem=None,
    )
    return restarted, (TakeSocketBack(), StopProcesses())


def _cleaned(state: State, event: Cleaned) -> Step:
    state = replace(state, cleaning=False)
    if state.start_after_cleaning and state.phase == Phase.STARTING:
        generation = state.generation + 1
        return replace(state, start_after_cleaning=False, generation=generation), (
            StartRun(generation),
        )
    return replace(state, start_after_cleaning=False), ()


def _refused(state: State, event: Refused) -> Step:
    return replace(state, phase=Phase.FAILED, problem=event.problem), (Log(event.problem.summary),)


def _shutdown(state: State, event: Shutdown) -> Step:
    return replace(state, phase=Phase.STOPPING), (Exit(),)


_ANY_BUT_STOPPING = (Phase.STOPPED, Phase.STARTING, Phase.RUNNING, Phase.FAILED)

#: (phase, event type) -> transition. A pair that is not here leaves the state as it is.
TRANSITIONS: dict[tuple[Phase, type], Callable[[State, object], Step]] = {
    (Phase.STOPPED, Requested): lambda state, event: _start(state),
    (Phase.STARTING, Ready): _ready,
    (Phase.STARTING, StartFailed): _start_failed,
    (Phase.STARTING, Exited): _exited_starting,
    (Phase.RUNNING, Exited): _exited_running,
    (Phase.FAILED, ProblemShown): _problem_shown,
    (Phase.STARTING, Relaunch): _relaunch,
    (Phase.RUNNING, Relaunch): _relaunch,
    (Phase.STOPPED, Refused): _refused,
    **{(phase, Cleaned): _cleaned for phase in (*_ANY_BUT_STOPPING, Phase.STOPPING)},
    **{(phase, Shutdown): _shutdown for phase in _ANY_BUT_STOPPING},
}


def step(state: State, event: object) -> Step:
    """The state after ``event``, and what the supervisor must do about it."""
    transition = TRANSITIONS.get((state.phase, type(event)))
    if transition is None:
        return state, ()
    return transition(state, event)
