"""The launcher's lifecycle as data: :func:`step` without any process or I/O."""

from __future__ import annotations

import typing
from dataclasses import replace

import pytest

from hpc_proxies.launcher import lifecycle as lc
from hpc_proxies.launcher.lifecycle import (
    Cleaned,
    Exit,
    Exited,
    HandOver,
    Log,
    Phase,
    ProblemShown,
    Ready,
    Refused,
    Relaunch,
    Requested,
    Shutdown,
    StartFailed,
    StartRun,
    State,
    StopProcesses,
    TakeSocketBack,
    step,
)
from hpc_proxies.problems import Problem

CRASH = Problem(code="crashed", summary="App crashed during start-up")
TIMEOUT = Problem(code="timeout", summary="App did not answer in time")
DISABLED = Problem(code="disabled", summary="App is disabled here", status=403, permanent=True)

#: One event of each type, for the pairs the table does not name.
SAMPLE_EVENTS = [
    Requested(),
    ProblemShown(),
    Ready(1),
    StartFailed(1, TIMEOUT),
    Exited("exit code 1", CRASH),
    Relaunch(),
    Cleaned(),
    Refused(DISABLED),
    Shutdown(),
]


def run(state: State, *events: object) -> tuple[State, list[tuple[object, ...]]]:
    """Feed ``events`` one by one; the final state and each step's effects."""
    effects = []
    for event in events:
        state, step_effects = step(state, event)
        effects.append(step_effects)
    return state, effects


# ---------------------------------------------------------------- every transition
STARTING_1 = State(phase=Phase.STARTING, generation=1)
RUNNING_1 = State(phase=Phase.RUNNING, generation=1)

#: (phase, event type) -> (state before, event, state after, effects), one per entry
#: of TRANSITIONS.
EXPECTED = {
    (Phase.STOPPED, Requested): (
        State(generation=1, note="The previous session ended (exit code 0)."),
        Requested(),
        State(Phase.STARTING, generation=2, note="The previous session ended (exit code 0)."),
        (StartRun(2),),
    ),
    (Phase.STARTING, Ready): (
        replace(STARTING_1, note="again"),
        Ready(1),
        RUNNING_1,
        (HandOver(),),
    ),
    (Phase.STARTING, StartFailed): (
        STARTING_1,
        StartFailed(1, TIMEOUT),
        State(Phase.FAILED, generation=1, cleaning=True, problem=TIMEOUT),
        (Log(TIMEOUT.summary), StopProcesses()),
    ),
    (Phase.STARTING, Exited): (
        STARTING_1,
        Exited("exit code 1", CRASH),
        State(Phase.FAILED, generation=1, cleaning=True, problem=CRASH),
        (Log(CRASH.summary), StopProcesses()),
    ),
    (Phase.RUNNING, Exited): (
        RUNNING_1,
        Exited("signal 9", CRASH),
        State(
            Phase.STOPPED,
            generation=1,
            cleaning=True,
            note="The previous session ended (signal 9).",
        ),
        (
            Log("exited (signal 9); the next request starts it again"),
            TakeSocketBack(),
            StopProcesses(),
        ),
    ),
    (Phase.FAILED, ProblemShown): (
        State(Phase.FAILED, generation=1, problem=CRASH),
        ProblemShown(),
        State(Phase.STOPPED, generation=1, problem=CRASH),
        (),
    ),
    (Phase.STARTING, Relaunch): (
        STARTING_1,
        Relaunch(),
        State(Phase.STARTING, generation=2, cleaning=True, start_after_cleaning=True),
        (TakeSocketBack(), StopProcesses()),
    ),
    (Phase.RUNNING, Relaunch): (
        RUNNING_1,
        Relaunch(),
        State(Phase.STARTING, generation=2, cleaning=True, start_after_cleaning=True),
        (TakeSocketBack(), StopProcesses()),
    ),
    (Phase.STOPPED, Refused): (
        State(),
        Refused(DISABLED),
        State(Phase.FAILED, problem=DISABLED),
        (Log(DISABLED.summary),),
    ),
    **{
        (phase, Cleaned): (
            State(phase, generation=1, cleaning=True),
            Cleaned(),
            State(phase, generation=1),
            (),
        )
        for phase in Phase
    },
    **{
        (phase, Shutdown): (
            State(phase, generation=1),
            Shutdown(),
            State(Phase.STOPPING, generation=1),
            (Exit(),),
        )
        for phase in Phase
        if phase != Phase.STOPPING
    },
}


def test_every_transition_is_expected():
    assert set(EXPECTED) == set(lc.TRANSITIONS)
    assert {type(event) for event in SAMPLE_EVENTS} == set(typing.get_args(lc.Event))


@pytest.mark.parametrize(
    "key", list(EXPECTED), ids=[f"{phase.value}-{event.__name__}" for phase, event in EXPECTED]
)
def test_transition(key):
    before, event, after, effects = EXPECTED[key]
    assert (before.phase, type(event)) == key
    assert step(before, event) == (after, effects)


NOT_IN_THE_TABLE = [
    (phase, event)
    for phase in Phase
    for event in SAMPLE_EVENTS
    if (phase, type(event)) not in lc.TRANSITIONS
]


@pytest.mark.parametrize(
    ("phase", "event"),
    NOT_IN_THE_TABLE,
    ids=[f"{phase.value}-{type(event).__name__}" for phase, event in NOT_IN_THE_TABLE],
)
def test_pairs_not_in_the_table_change_nothing(phase, event):
    state = State(phase, generation=1, cleaning=True, problem=CRASH, note="a note")
    assert step(state, event) == (state, ())


# ---------------------------------------------------------------- stories
def test_a_request_starts_the_first_run():
    state, effects = step(State(), Requested())
    assert state.phase == Phase.STARTING
    assert effects == (StartRun(1),)


def test_ready_hands_the_socket_over():
    state, effects = run(State(), Requested(), Ready(1))
    assert state.phase == Phase.RUNNING
    assert effects[-1] == (HandOver(),)


def test_a_second_request_while_starting_does_not_start_again():
    state, effects = run(State(), Requested(), Requested())
    assert (state.phase, state.generation) == (Phase.STARTING, 1)
    assert effects == [(StartRun(1),), ()]


def test_a_stale_ready_after_a_relaunch_is_ignored():
    state, _ = run(State(), Requested(), Ready(1), Relaunch())
    assert state.phase == Phase.STARTING
    stale, effects = step(state, Ready(1))
    assert (stale, effects) == (state, ())
    stale, effects = step(state, StartFailed(1, CRASH))
    assert (stale, effects) == (state, ())


def test_a_stale_ready_of_generation_0_is_ignored():
    state, _ = run(State(), Requested(), Relaunch())
    assert step(state, Ready(0)) == (state, ())


def test_a_passing_failure_is_shown_once_and_the_next_request_waits_for_cleaning():
    state, effects = run(State(), Requested(), StartFailed(1, CRASH))
    assert state.phase == Phase.FAILED
    assert state.problem == CRASH
    assert state.cleaning
    assert effects[-1] == (Log(CRASH.summary), StopProcesses())

    state, effects = run(state, ProblemShown())
    assert state.phase == Phase.STOPPED
    assert effects == [()]

    # Requested while the failed run is still being stopped: no overlap.
    state, effects = run(state, Requested())
    assert state.phase == Phase.STARTING
    assert state.problem is None
    assert state.start_after_cleaning
    assert effects == [()]

    state, effects = run(state, Cleaned())
    assert (state.phase, state.generation) == (Phase.STARTING, 2)
    assert not state.cleaning and not state.start_after_cleaning
    assert effects == [(StartRun(2),)]

    state, effects = run(state, Ready(2))
    assert state.phase == Phase.RUNNING
    assert effects == [(HandOver(),)]


def test_cleaned_before_the_next_request_starts_nothing():
    state, effects = run(State(), Requested(), StartFailed(1, CRASH), Cleaned())
    assert (state.phase, state.cleaning) == (Phase.FAILED, False)
    assert effects[-1] == ()
    state, effects = run(state, ProblemShown(), Requested())
    assert state.phase == Phase.STARTING
    assert effects == [(), (StartRun(2),)]


def test_a_permanent_problem_stays():
    state, effects = run(State(), Refused(DISABLED))
    assert state.phase == Phase.FAILED
    assert state.refused
    assert effects == [(Log(DISABLED.summary),)]
    for event in (ProblemShown(), Requested(), ProblemShown(), Requested()):
        after, effects = step(state, event)
        assert (after, effects) == (state, ())
    assert state.phase == Phase.FAILED
    assert state.problem == DISABLED


def test_an_exit_while_running_stops_with_a_note():
    state, effects = run(State(), Requested(), Ready(1), Exited("exit code 0", CRASH))
    assert state.phase == Phase.STOPPED
    assert state.note == "The previous session ended (exit code 0)."
    assert state.problem is None  # not a failure: the next request starts it again
    assert state.cleaning
    assert effects[-1][1:] == (TakeSocketBack(), StopProcesses())
    assert isinstance(effects[-1][0], Log)

    state, effects = run(state, Requested(), Cleaned())
    assert state.phase == Phase.STARTING
    assert state.note == "The previous session ended (exit code 0)."  # on the progress page
    assert effects == [(), (StartRun(2),)]
    state, _ = step(state, Ready(2))
    assert state.note == ""


def test_an_exit_while_starting_is_a_failure():
    state, effects = run(State(), Requested(), Exited("exit code 2", CRASH))
    assert state.phase == Phase.FAILED
    assert state.problem == CRASH
    assert effects[-1] == (Log(CRASH.summary), StopProcesses())


def test_a_relaunch_while_running_starts_only_after_cleaning():
    state, _ = run(State(), Requested(), Ready(1))
    state, effects = step(state, Relaunch())
    assert state.phase == Phase.STARTING
    assert effects == (TakeSocketBack(), StopProcesses())
    assert state.cleaning and state.start_after_cleaning

    # Requests meanwhile see the progress page and start nothing.
    after, effects = step(state, Requested())
    assert (after, effects) == (state, ())

    state, effects = step(state, Cleaned())
    assert effects == (StartRun(state.generation),)
    assert state.generation > 1
    assert not state.cleaning and not state.start_after_cleaning
    state, effects = step(state, Ready(state.generation))
    assert state.phase == Phase.RUNNING
    assert effects == (HandOver(),)


def test_a_relaunch_while_starting_drops_the_start_under_way():
    state, _ = run(State(), Requested())
    state, effects = step(state, Relaunch())
    assert effects == (TakeSocketBack(), StopProcesses())
    assert step(state, StartFailed(1, TIMEOUT)) == (state, ())
    # A second relaunch before the clean-up: still one start, after Cleaned.
    state, effects = step(state, Relaunch())
    assert effects == ()
    state, effects = step(state, Cleaned())
    assert effects == (StartRun(state.generation),)
    assert step(state, Ready(1)) == (state, ())
    assert step(state, Ready(state.generation))[0].phase == Phase.RUNNING


def test_relaunch_when_stopped_or_failed_waits_for_a_request():
    for state in (State(), State(Phase.FAILED, problem=CRASH)):
        assert step(state, Relaunch()) == (state, ())


@pytest.mark.parametrize(
    "events",
    [
        [],
        [Requested()],
        [Requested(), Ready(1)],
        [Requested(), StartFailed(1, CRASH)],
        [Refused(DISABLED)],
        [Requested(), Ready(1), Exited("exit code 0", CRASH)],
    ],
    ids=["stopped", "starting", "running", "failed", "refused", "stopped-cleaning"],
)
def test_shutdown_exits_once(events):
    state, _ = run(State(), *events)
    state, effects = step(state, Shutdown())
    assert state.phase == Phase.STOPPING
    assert effects == (Exit(),)
    # Nothing starts or exits again: a second signal, a late request, the clean-up.
    for event in (Shutdown(), Requested(), Ready(state.generation), Relaunch(), Shutdown()):
        after, effects = step(state, event)
        assert (after, effects) == (state, ())
    state, effects = step(state, Cleaned())
    assert state.phase == Phase.STOPPING
    assert effects == ()


def test_shutdown_while_a_start_waits_for_cleaning_starts_nothing():
    state, _ = run(State(), Requested(), Ready(1), Relaunch(), Shutdown())
    assert state.start_after_cleaning
    state, effects = step(state, Cleaned())
    assert state.phase == Phase.STOPPING
    assert not state.cleaning
    assert effects == ()
