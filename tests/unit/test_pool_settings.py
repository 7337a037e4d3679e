"""Which pooled server connection may serve a client's startup settings, and what it must be sent."""

from __future__ import annotations

from rlsproxy.pool import serves_without_leak, settings_exchange, settings_messages

APP = (("application_name", "reports"),)
APP_AND_PATH = (("application_name", "reports"), ("search_path", "leaky,public"))


def test_a_connection_started_with_the_same_settings_needs_nothing() -> None:
    assert settings_exchange(APP_AND_PATH, APP_AND_PATH) == b""
    assert settings_exchange((), ()) == b""


def test_any_other_connection_gets_every_setting_of_the_client() -> None:
    assert settings_exchange((), APP) == settings_messages(APP)
    assert settings_exchange(APP, APP_AND_PATH) == settings_messages(APP_AND_PATH)
    # The same names in another order are another startup packet: set them all.
    assert settings_exchange(APP_AND_PATH, APP_AND_PATH[::-1]) == settings_messages(APP_AND_PATH[::-1])


def test_startup_settings_the_client_does_not_override_would_leak() -> None:
    assert serves_without_leak((), APP)
    assert serves_without_leak(APP, APP_AND_PATH)  # the client sets application_name itself
    assert serves_without_leak(APP_AND_PATH, (("search_path", "x"), ("application_name", "y")))
    assert not serves_without_leak(APP_AND_PATH, APP)  # search_path=leaky would stay
    assert not serves_without_leak(APP, ())
