"""Problems and log lines quote client input: neither may fail on its content."""

from __future__ import annotations

import io

import orjson
import structlog

from infrastructure.logs import configure_logging
from infrastructure.problems import Problem


def test_a_problem_quoting_a_lone_surrogate_still_answers() -> None:
    response = Problem(400, "invalid field name 'x\ud800'", bad=b"raw").to_response("/v1/q")
    body = orjson.loads(response.body)
    assert response.status_code == 400
    assert body["detail"] == "invalid field name 'x\ufffd'"
    assert body["bad"] == "b'raw'"  # unknown types as their text, as before


def test_a_log_line_quoting_a_lone_surrogate_is_written() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        structlog.get_logger("test").warning("odd input", field="x\ud800")
        line = orjson.loads(stream.getvalue().strip().splitlines()[-1])
        assert line["field"] == "x\ufffd"
    finally:
        configure_logging("warning", "json")
