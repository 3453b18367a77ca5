"""Collect a logger's messages in tests (detectron2's logger setup may stop propagation to caplog)."""
import logging


class RecordLogs(logging.Handler):
    def __init__(self, logger: logging.Logger):
        super().__init__(logging.DEBUG)
        self.logger, self.messages = logger, []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> "RecordLogs":
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
