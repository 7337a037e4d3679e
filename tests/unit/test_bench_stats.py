"""The benchmark's pure parts: reading pgbench's report, summaries, per-round ratios, /proc parsing."""

from __future__ import annotations

import pytest

from bench.procstat import parse_status_kib, parse_tree_fields, parse_user_system_seconds
from bench.stats import Summary, paired_ratio, parse_pgbench, per_thousand, pgbench_errors, summarize

PGBENCH_18_REPORT = """\
pgbench (18.6)
transaction type: <builtin: select only>
scaling factor: 10
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 123456
number of failed transactions: 0 (0.000%)
latency average = 0.646 ms
initial connection time = 3.619 ms
tps = 12345.678901 (without initial connection time)
"""


def test_parse_full_report() -> None:
    report = parse_pgbench(PGBENCH_18_REPORT)
    assert report.tps == pytest.approx(12345.678901)
    assert report.transactions == 123456
    assert report.failed == 0
    assert report.latency_ms == pytest.approx(0.646)


@pytest.mark.parametrize(
    ("line", "tps"),
    [
        ("tps = 1234.5 (without initial connection time)", 1234.5),
        ("tps = 541.097179 (including reconnection times)", 541.097179),  # pgbench -C
        ("tps = 99 (excluding connections establishing)", 99.0),  # pgbench before 14
    ],
)
def test_parse_tps_line_variants(line: str, tps: float) -> None:
    assert parse_pgbench(line + "\n").tps == pytest.approx(tps)


def test_parse_counts_with_fixed_transaction_count() -> None:
    # With -t, pgbench prints "done/planned".
    report = parse_pgbench("number of transactions actually processed: 200/200\n")
    assert report.transactions == 200


def test_parse_missing_lines_are_none() -> None:
    report = parse_pgbench("pgbench (18.6)\n")
    assert report == type(report)(None, None, None, None)


def test_tps_only_at_line_start() -> None:
    # A query echoed in an error message must not be read as the figure.
    assert parse_pgbench("ERROR: select 'tps = 5 (x)'\n").tps is None


def test_failed_transactions_count() -> None:
    assert parse_pgbench("number of failed transactions: 17 (0.137%)\n").failed == 17


def test_pgbench_errors_collapse_per_client_repeats() -> None:
    stderr = """\
pgbench: error: client 3 script 0 aborted in command 1 query 0: ERROR:  permission denied for table x
pgbench: error: client 5 script 0 aborted in command 1 query 0: ERROR:  permission denied for table x
pgbench: error: connection to server at "127.0.0.1", port 6432 failed: FATAL:  too many
pgbench: error: Run was aborted; the above results are incomplete.
progress: 1.0 s, 100.0 tps
"""
    assert pgbench_errors(stderr) == [
        "ERROR: permission denied for table x",
        'connection to server at "127.0.0.1", port 6432 failed: FATAL: too many',
        "Run was aborted; the above results are incomplete.",
    ]


def test_pgbench_errors_none() -> None:
    assert pgbench_errors("pgbench: warning: something harmless\n") == []


def test_summarize_odd_and_even() -> None:
    assert summarize([3.0, 1.0, 2.0]) == Summary(2.0, 1.0, 3.0, 3)
    assert summarize([4.0, 1.0, 2.0, 3.0]) == Summary(2.5, 1.0, 4.0, 4)


def test_summarize_skips_missing_rounds() -> None:
    assert summarize([None, 5.0, None]) == Summary(5.0, 5.0, 5.0, 1)
    assert summarize([None, None]) is None
    assert summarize([]) is None


def test_paired_ratio_is_median_of_per_round_ratios() -> None:
    values = [10.0, 20.0, 30.0]
    baselines = [10.0, 40.0, 15.0]  # per round 1.0, 0.5, 2.0 -> median 1.0
    assert paired_ratio(values, baselines) == pytest.approx(1.0)
    # Not the ratio of the medians, 20 / 15: rounds are paired, not pooled.
    assert paired_ratio(values, baselines) != pytest.approx(20.0 / 15.0)


def test_paired_ratio_pairs_by_round_and_skips_gaps() -> None:
    assert paired_ratio([None, 6.0, 9.0], [3.0, None, 3.0]) == pytest.approx(3.0)
    assert paired_ratio([1.0, 2.0], [0.0, 4.0]) == pytest.approx(0.5)  # zero baseline skipped
    assert paired_ratio([None], [1.0]) is None
    assert paired_ratio([], []) is None


def test_per_thousand() -> None:
    assert per_thousand(2.5, 10_000) == pytest.approx(0.25)
    assert per_thousand(1.0, 0) is None
    assert per_thousand(1.0, None) is None


def test_parse_cpu_seconds_with_awkward_command_name() -> None:
    # comm may hold spaces and parentheses; utime=250, stime=50 ticks at 100 Hz.
    fields = ["S", "1", "2", "3", "0", "-1", "4194304", "10", "0", "0", "0", "250", "50", "0", "0"]
    line = "4242 (python -m (x)) " + " ".join(fields)
    assert sum(parse_user_system_seconds(line, ticks_per_second=100)) == pytest.approx(3.0)
    assert parse_user_system_seconds(line, ticks_per_second=100) == pytest.approx((2.5, 0.5))


def test_parse_tree_fields_reads_parent_own_and_reaped_children() -> None:
    # ppid=77; utime=250, stime=50; cutime=120, cstime=30 ticks at 100 Hz.
    fields = ["S", "77", "2", "3", "0", "-1", "4194304", "10", "0", "0", "0", "250", "50", "120", "30"]
    line = "4242 (postgres: app) " + " ".join(fields)
    parent, own, reaped = parse_tree_fields(line, ticks_per_second=100)
    assert parent == 77
    assert own == pytest.approx(3.0)
    assert reaped == pytest.approx(1.5)


def test_parse_status_kib() -> None:
    status = "Name:\tpython\nVmPeak:\t  200 kB\nVmRSS:\t   74528 kB\n"
    assert parse_status_kib(status, "VmRSS") == 74528
    assert parse_status_kib(status, "VmSwap") is None


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_relay_micro_benchmark_runs_whole_transactions(mode: str) -> None:
    """The relay micro-benchmark must time what it says: each call one complete transaction."""
    from bench.micro import RelayTransaction

    transaction = RelayTransaction(mode)
    for _ in range(3):
        assert transaction() == transaction.client_sees  # the prefix's replies swallowed
        assert not transaction.state.pending  # every expected reply arrived: nothing left owed
    assert transaction.relay.transactions == 3
