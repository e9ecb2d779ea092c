"""Which version a rollback goes to, and when it is refused (pure decision, table-driven)."""
import pytest

from pipelines.release.rollback import RollbackRefused, rollback_target


@pytest.mark.parametrize("current, former, to, expected", [
    ("3", ["1", "3"], None, "1"),                  # the champion before the current one
    ("5", ["1", "3", "5"], None, "3"),
    ("5", ["1", "3", "5"], "1", "1"),              # any earlier champion, by number
    ("5", ["1", "3", "5"], "v3", "3"),             # "v3" reads as 3
    ("1", ["3", "1"], None, "3"),                  # after a rollback to 1, the one before is 3 (a redo)
    ("4", ["1", "3"], None, "3"),                  # current never tagged (promoted by hand): the newest before
    ("1", ["1"], None, "no earlier one"),          # the first champion has nothing behind it
    (None, [], None, "no champion"),
    ("5", ["1", "3", "5"], "5", "is the champion already"),
    ("5", ["1", "3", "5"], "4", "v4 was never champion"),
])
def test_rollback_target(current, former, to, expected):
    if expected.isdigit():
        assert rollback_target(current, former, to) == expected
    else:
        with pytest.raises(RollbackRefused, match=expected):
            rollback_target(current, former, to)
