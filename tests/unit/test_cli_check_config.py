"""`rlsproxy check-config` takes the file as PATH (as config/rlsproxy.yaml's header says) or --config PATH."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlsproxy.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "rlsproxy.yaml"


@pytest.fixture(autouse=True)
def example_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLSPROXY_JWT_SECRET", "s" * 32)
    monkeypatch.setenv("RLSPROXY_UPSTREAM_PASSWORD", "authenticator-pw")
    monkeypatch.setenv("RLSPROXY_SERVICE_PASSWORD", "service-pw")
    monkeypatch.delenv("RLSPROXY_CONFIG", raising=False)


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text("listen:\n  port: 70000\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("form", ["positional", "option"])
def test_the_example_is_ok_either_way(form: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(EXAMPLE)] if form == "positional" else ["--config", str(EXAMPLE)]
    assert main(["check-config", *args]) == 0
    assert capsys.readouterr().out.startswith(f"{EXAMPLE}: OK\n")


@pytest.mark.parametrize("form", ["positional", "option"])
def test_the_file_named_is_the_one_checked(
    form: str, broken: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(broken)] if form == "positional" else ["--config", str(broken)]
    assert main(["check-config", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{broken}: ")
    assert "listen.port" in err


def test_the_same_file_both_ways_is_fine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE), "--config", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out.startswith(f"{EXAMPLE}: OK\n")


def test_two_different_files_is_a_usage_error(broken: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["check-config", str(broken), "--config", str(EXAMPLE)])
    assert exit_info.value.code == 2
    assert "give the file once" in capsys.readouterr().err
