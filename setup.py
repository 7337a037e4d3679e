"""Optional compiled build: `RLSPROXY_COMPILE=1` compiles the hot path with mypyc.

All metadata is in pyproject.toml; this file only adds the C extensions, and only when asked, so a
plain `pip install .` stays pure Python. The compiled modules are the per-message path (the wire
codec, the session machines, the asyncio edge with its pool and counters) and the per-connection path
(startup, handshake).
Measured (README, Performance, run 20261124T034129Z): 12-19% less proxy CPU per `pgbench -S`
transaction, 17% per TPC-B transaction, 13% per new connection.
The .py files ship too; Python imports the compiled module when there is one.

Needs a C compiler and the `compile` extra installed (mypy checks the code with the runtime
dependencies' types, as `make lint` does), and no build isolation (mypy is not a requirement of
the pure build):

    pip install ".[compile]"
    RLSPROXY_COMPILE=1 pip wheel --no-build-isolation --no-deps --wheel-dir dist .

Code in these modules must also be valid for mypyc (`make test` runs the suite on both builds).
"""

from __future__ import annotations

import os

from setuptools import setup

COMPILED = [
    "rlsproxy/wire/codes.py",
    "rlsproxy/wire/framing.py",
    "rlsproxy/wire/frontend.py",
    "rlsproxy/wire/backend.py",
    "rlsproxy/wire/startup.py",
    "rlsproxy/session/expected.py",
    "rlsproxy/session/context.py",
    "rlsproxy/session/simple.py",
    "rlsproxy/session/guard_fast.py",
    "rlsproxy/session/server.py",
    "rlsproxy/session/relay.py",
    "rlsproxy/auth/startup.py",
    "rlsproxy/handshake.py",
    "rlsproxy/server.py",
    "rlsproxy/pool.py",
    "rlsproxy/figures.py",
]

if os.environ.get("RLSPROXY_COMPILE") == "1":
    from mypyc.build import mypycify

    # Asserts stay: some are the fail-closed checks of the session machines.
    setup(ext_modules=mypycify(COMPILED, opt_level="3", strip_asserts=False))
else:
    setup()
