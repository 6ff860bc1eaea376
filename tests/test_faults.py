"""vmlan.faults: internal errors counted by kind, the first traceback of each kept, new kinds reported once."""

import pytest

from vmlan.faults import MAX_KINDS, MAX_TRACEBACK, OVERFLOW_KIND, Faults


def fail(message):
    raise ValueError(message)


def test_counts_by_kind_and_reports_each_new_kind_once_with_its_traceback():
    reported = []
    faults = Faults(on_new=lambda kind, text: reported.append((kind, text)))
    for i in range(3):
        try:
            fail(f"first {i}")
        except ValueError:
            faults.record("dhcp")
    try:
        fail("other")
    except ValueError:
        faults.record("dns")
    assert [kind for kind, _ in reported] == ["dhcp", "dns"]
    assert "Traceback" in reported[0][1] and "ValueError: first 0" in reported[0][1]
    assert faults.count("dhcp") == 3 and faults.count("dns") == 1 and faults.count("tcp") == 0
    assert faults.total == 4
    assert faults.first_traceback("dhcp") == reported[0][1]
    assert faults.as_dict() == {"dhcp": {"count": 3, "first": reported[0][1]},
                                "dns": {"count": 1, "first": reported[1][1]}}


def test_an_exception_can_be_passed_and_no_exception_is_fine_too():
    faults = Faults()
    faults.record("explicit", KeyError("k"))
    faults.record("bare")
    assert "KeyError: 'k'" in faults.first_traceback("explicit")
    assert faults.first_traceback("bare") == "bare (no exception)\n"


def test_a_failing_report_never_raises():
    def broken(kind, text):
        raise RuntimeError("logging is broken")

    faults = Faults(on_new=broken)
    faults.record("x", ValueError("v"))
    assert faults.count("x") == 1


def test_the_kind_table_and_the_tracebacks_are_bounded():
    reported = []
    faults = Faults(on_new=lambda kind, text: reported.append(kind))
    for i in range(MAX_KINDS + 10):
        faults.record(f"kind {i}", ValueError(i))
    assert len(faults.as_dict()) == MAX_KINDS + 1
    assert faults.count(OVERFLOW_KIND) == 10 and reported[-1] == OVERFLOW_KIND
    assert len(reported) == MAX_KINDS + 1
    faults = Faults()
    try:
        fail("x" * (3 * MAX_TRACEBACK))
    except ValueError:
        faults.record("long")
    assert len(faults.first_traceback("long")) <= MAX_TRACEBACK + 4


@pytest.mark.parametrize("n", [1, 5])
def test_only_new_kinds_are_reported(n):
    calls = []
    faults = Faults(on_new=lambda kind, text: calls.append(kind))
    for _ in range(n):
        faults.record("k", ValueError())
    assert calls == ["k"]
