"""Third-party start-up messages that tell a user of this project nothing, each hidden on its own. Every other
warning and log record, the project's own included, is left as it is.

- fvcore (two losses in ``fvcore.nn``) and detectron2 (two box transforms in ``detectron2.modeling``) call
  ``torch.jit.script`` when they are imported, and recent torch answers each call with a FutureWarning that
  ``torch.jit.script`` is deprecated: a notice for those libraries' authors. :func:`import_third_party_quietly`
  imports both with that one warning ignored, when this module is imported: ``import dinat_m2f`` imports it before
  anything else, so train_net.py and the demo, which import dinat_m2f before detectron2, start without it.
- detectron2's environment report imports ``torch.utils.cpp_extension``, which logs "No CUDA runtime is found,
  using CUDA_HOME=..." on a machine with a CUDA toolkit and no usable GPU, although nothing is compiled; the
  run's log already names the device it uses. :func:`hide_no_cuda_runtime_notice` drops that record.

This module imports no third-party code at its top: it runs before detectron2 and fvcore are imported.
"""
import importlib
import logging
import warnings

TORCH_JIT_SCRIPT_DEPRECATED = r"`torch\.jit\.script` is deprecated"
NO_CUDA_RUNTIME = "No CUDA runtime is found"
CPP_EXTENSION_LOGGER = "torch.utils.cpp_extension"


SCRIPTED_AT_IMPORT = ("fvcore.nn", "detectron2.modeling")


def import_third_party_quietly() -> None:
    """Import the modules of :data:`SCRIPTED_AT_IMPORT` with torch's deprecation warning for their
    ``torch.jit.script`` calls ignored; the filter holds only during these imports."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCH_JIT_SCRIPT_DEPRECATED, category=FutureWarning)
        for module in SCRIPTED_AT_IMPORT:
            importlib.import_module(module)


class DropMessage(logging.Filter):
    """Drops the records whose format string starts with ``prefix``; passes all others."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def hide_no_cuda_runtime_notice() -> None:
    """Drop torch's "No CUDA runtime is found" record (and only that one) from ``torch.utils.cpp_extension``'s
    logger, once per process."""
    logger = logging.getLogger(CPP_EXTENSION_LOGGER)
    if not any(isinstance(f, DropMessage) and f.prefix == NO_CUDA_RUNTIME for f in logger.filters):
        logger.addFilter(DropMessage(NO_CUDA_RUNTIME))


import_third_party_quietly()
