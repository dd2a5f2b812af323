"""LOG_FORMAT=json: each log record is one JSON object on one line."""

import json
import logging
import os
import subprocess
import sys

from embedhub.core.logformat import JsonFormatter
from tests.conftest import ROOT


def _record(*, exc_info=None, extra: dict) -> logging.LogRecord:
    logger = logging.getLogger("embedhub.jobs.runner")
    return logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, "job %s lost", (7,), exc_info, extra=extra
    )


def test_a_record_becomes_one_json_object_with_level_logger_and_message():
    line = JsonFormatter().format(_record(extra={"job": 7, "worker": "w1@host"}))
    entry = json.loads(line)
    assert "\n" not in line
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "WARNING",
        "embedhub.jobs.runner",
        "job 7 lost",
    )
    assert entry["job"] == 7 and entry["worker"] == "w1@host"  # extra= fields are kept
    assert entry["time"].endswith("+00:00")
    assert "msg" not in entry and "args" not in entry  # no LogRecord internals


def test_an_exception_is_one_field_and_an_unencodable_extra_is_stringified():
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = _record(exc_info=exc_info, extra={"path": ROOT})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["exc_info"].startswith("Traceback") and "ValueError: boom" in entry["exc_info"]
    assert entry["path"] == str(ROOT)


def test_log_format_json_switches_the_settings_logging_to_json():
    code = (
        "import django, logging; django.setup(); "
        "logging.getLogger('embedhub.probe').warning('hello %s', 'json')"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
        "DJANGO_SETTINGS_MODULE": "embedhub.settings.test",
        "LOG_FORMAT": "json",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stderr.splitlines() if "embedhub.probe" in line]
    assert [(e["level"], e["message"]) for e in lines] == [("WARNING", "hello json")]
