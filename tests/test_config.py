"""Settings never show a secret when printed (logs, tracebacks, debuggers)."""

from __future__ import annotations

from service.config import Settings

SECRET = "do-not-print-this-token-0123456789"


def test_tokens_and_passwords_stay_out_of_the_settings_repr() -> None:
    settings = Settings(write_tokens=(SECRET,), read_tokens=(SECRET,),
                        metrics_tokens=(SECRET,), redis_password=SECRET)
    assert SECRET not in repr(settings)
    assert settings.write_tokens == (SECRET,)
