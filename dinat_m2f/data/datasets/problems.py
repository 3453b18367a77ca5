"""Problems found in a dataset, collected so that one error reports all of them."""
from typing import List, Type

from .paths import DatasetFileError

MAX_LISTED = 20  # problems quoted in one error message; the count says how many more there are


class DatasetProblems:
    """Messages about what is wrong with a dataset (each naming the file, key or id), raised together."""

    def __init__(self) -> None:
        self.messages: List[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    def extend(self, messages: List[str]) -> None:
        self.messages.extend(messages)

    def __bool__(self) -> bool:
        return bool(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def raise_if_any(self, what: str, error_type: Type[Exception] = DatasetFileError) -> None:
        """Raise ``error_type`` listing the first MAX_LISTED problems and their count, headed by ``what``."""
        if not self.messages:
            return
        count = len(self.messages)
        shown = f" (the first {MAX_LISTED})" if count > MAX_LISTED else ""
        raise error_type(
            f"{what}: {count} problem{'s' * (count != 1)}{shown}:\n  " + "\n  ".join(self.messages[:MAX_LISTED])
        )
