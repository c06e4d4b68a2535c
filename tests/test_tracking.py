"""The tracking module's shapes: the stand-in that ranks other than 0 get answers every call a TrackedRun does."""

import inspect

from jobs.tracking import NullRun, TrackedRun


def test_the_stand_in_for_other_ranks_has_every_call_of_a_tracked_run_and_nothing_else():
    def calls(cls):
        return {name: inspect.signature(member).parameters.keys()
                for name, member in vars(cls).items() if callable(member) and not name.startswith("_")}

    tracked, stand_in = calls(TrackedRun), calls(NullRun)
    assert tracked.keys() == stand_in.keys()
    for name in tracked:
        assert list(tracked[name]) == list(stand_in[name]), name
    assert not hasattr(NullRun(), "log_metric"), "a misspelt call fails on every rank"
