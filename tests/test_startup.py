"""dinat_m2f.startup: the third-party start-up notices it hides are gone, and nothing else is: other warnings
and other records of the same logger still come through, and no warning filter outlives the quiet imports."""
import logging
import os
import subprocess
import sys
import warnings

from dinat_m2f.startup import (CPP_EXTENSION_LOGGER, NO_CUDA_RUNTIME, hide_no_cuda_runtime_notice,
                               import_third_party_quietly)
from log_capture import RecordLogs
from project_paths import REPO

JIT_NOTICE = "`torch.jit.script` is deprecated"


def test_importing_the_package_shows_no_torch_jit_notice_of_fvcore_or_detectron2():
    """A fresh interpreter with every warning shown: fvcore.nn and detectron2.modeling script functions at import,
    which recent torch answers with a FutureWarning each. The same interpreter still shows a FutureWarning that
    is not theirs, raised after the import."""
    code = "import warnings, dinat_m2f; warnings.warn('after the import', FutureWarning)"
    result = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert JIT_NOTICE not in result.stderr, result.stderr[-3000:]
    assert "FutureWarning: after the import" in result.stderr


def test_quiet_imports_leave_the_warning_filters_as_they_were():
    before = list(warnings.filters)
    import_third_party_quietly()
    assert warnings.filters == before


def test_only_the_no_cuda_runtime_record_is_dropped():
    hide_no_cuda_runtime_notice()
    hide_no_cuda_runtime_notice()  # once per process, however often it is called
    logger = logging.getLogger(CPP_EXTENSION_LOGGER)
    assert len([f for f in logger.filters if getattr(f, "prefix", None) == NO_CUDA_RUNTIME]) == 1
    with RecordLogs(logger) as records:
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        logger.warning("Error checking compiler version for %s", "c++")
    assert records.messages == ["Error checking compiler version for c++"]
    other = logging.getLogger("dinat_m2f.test_startup")
    with RecordLogs(other) as records:
        other.warning("No CUDA runtime is found, but this logger is not torch's")
    assert records.messages == ["No CUDA runtime is found, but this logger is not torch's"]
