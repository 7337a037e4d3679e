"""Running the variants round by round, targets interleaved, charging CPU to the middle process."""

from __future__ import annotations

import time
from collections.abc import Iterator

from bench import cluster
from bench.micro import run_micro
from bench.pgbench import run_pgbench
from bench.ports import tail
from bench.procstat import tree_cpu_seconds, user_system_seconds
from bench.result import Measurement
from bench.scenarios import Variant
from bench.stack import Say, Stack
from bench.stats import per_thousand

_SETTLE_S = 0.3


class ProxyDied(RuntimeError):
    pass


def warm_up(stack: Stack, duration_s: float, say: Say) -> None:
    """A short unrecorded select-only run per target: fills pools, caches and the OS page cache."""
    for target in stack.targets:
        result = run_pgbench(
            cluster.pgbench_path(stack.pg), stack.endpoint(target), ["-S", "-c", "8", "-j", "2"], duration_s
        )
        problems = f"  ERRORS: {'; '.join(result.errors)}" if result.errors else ""
        say(f"  warm-up {target}: {result.value or 0:.0f} tps{problems}")


def run_rounds(
    stack: Stack, variants: list[Variant], rounds: int, duration_s: float, say: Say
) -> Iterator[Measurement]:
    """Round by round; within a round every variant, and within a variant every target in turn
    (A B C A B C ...), so a pair compared within a round ran close together in time."""
    for round_no in range(rounds):
        say(f"round {round_no + 1}/{rounds}")
        for variant in variants:
            for target in variant.targets:
                m = measure(stack, variant, target, round_no, duration_s)
                shown = "-" if m.value is None else f"{m.value:.1f}"
                flag = f"  ERRORS: {'; '.join(m.errors)[:300]}" if m.errors else ""
                say(f"  {variant.scenario} {variant.name} {target}: {shown} {variant.unit}{flag}")
                yield m
                for proxy in stack.proxies:
                    if not proxy.alive():
                        code = proxy.proc.returncode
                        raise ProxyDied(f"rlsproxy exited with {code}\n{tail(proxy.log_path)}")


def measure(stack: Stack, variant: Variant, target: str, round_no: int, duration_s: float) -> Measurement:
    pid = stack.endpoint(target).middle_pid
    postmaster = cluster.postmaster_pid(stack.pg)
    before = user_system_seconds(pid) if pid else None
    pg_before = tree_cpu_seconds(postmaster)
    started = time.monotonic()
    result = variant.run(stack, target, duration_s)
    wall = time.monotonic() - started
    user = cpu = None
    if pid and before is not None:
        # The split says whose cost it is: system time goes to the socket calls, the same for
        # every proxy making the same calls; user time is the proxy's own code.
        after = user_system_seconds(pid)
        user, cpu = after[0] - before[0], sum(after) - sum(before)
    # Backends of clients that just left end and are reaped within milliseconds; one read while
    # that happens could miss one, so Postgres is read once they are gone.
    time.sleep(_SETTLE_S)
    pg_cpu = tree_cpu_seconds(postmaster) - pg_before
    return Measurement(
        scenario=variant.scenario,
        variant=variant.name,
        target=target,
        round=round_no,
        unit=variant.unit,
        value=result.value,
        work=result.work,
        cpu_s=cpu,
        cpu_s_per_1k=per_thousand(cpu, result.work) if cpu is not None else None,
        wall_s=round(wall, 2),
        errors=result.errors,
        extra=result.extra,
        pg_cpu_s_per_1k=per_thousand(pg_cpu, result.work),
        user_cpu_s_per_1k=per_thousand(user, result.work) if user is not None else None,
    )


def run_micro_measurements(repeats: int, say: Say) -> Iterator[Measurement]:
    say(f"micro-benchmarks ({repeats} repeats each)")
    for variant, target, per_op in run_micro(repeats):
        say(f"  {variant} {target}: {sorted(per_op)[len(per_op) // 2]:.2f} µs/op")
        for i, value in enumerate(per_op):
            yield Measurement("micro", variant, target, i, "µs/op", value, None, None, None, 0.0, [], {})
