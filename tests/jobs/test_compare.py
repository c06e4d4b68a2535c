"""compare's input (jobs/compare.py, jobs/tracking/reading.py): a name that is neither an experiment nor a run, and an
--out where no folder can be made, are one line each, before any run is read or figure drawn."""

import pytest

from conftest import assert_refused, fill


@pytest.mark.parametrize("template, words", [
    (["compare", "no_such_experiment"], ["neither an experiment name nor a run id"]),
    (["compare", "tiny_bad", "--out", "{root}/a-file"], ["--out", "cannot make a folder there"]),
    (["compare"], ["name at least one experiment or run id"]),
])
def test_what_compare_cannot_read_is_one_clear_line(bad_files, store, template, words, capsys):
    assert_refused(fill(template, bad_files), capsys, words)
