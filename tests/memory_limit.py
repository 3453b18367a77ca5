"""A cap on the memory a test's code may add, to check that something is bounded (memory is measured by
tools/, this only fails where far more would be allocated)."""
import contextlib
import resource


@contextlib.contextmanager
def address_space_budget(budget_bytes: int):
    """New allocations beyond `budget_bytes` more than the process maps now fail (MemoryError/RuntimeError)."""
    with open("/proc/self/status") as status:
        mapped_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (mapped_kb * 1024 + budget_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
