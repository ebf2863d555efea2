"""Where a scan's tasks run: a Dask cluster, local worker processes by default.

Each worker is one process with one thread (and onnxruntime one intra-op thread): the model is
small, so a core is best used by a file of its own. `--scheduler` connects to an existing
cluster instead (`dask scheduler` + `dask worker` on other machines, whale-listen installed on
each, the audio at the same paths). dask.distributed is the `scan` extra, imported only here.
"""

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from detector.errors import UsageError, WhaleError

CONNECT_TIMEOUT_S = 30
WORKER_WAIT_S = 60
_ADDRESS = re.compile(r"^[a-z][a-z0-9+.-]*://[^\s/]+:\d{1,5}$")


def check_scheduler(address: str) -> str:
    """A Dask scheduler address, `tcp://HOST:PORT` (or tls://...), checked before any work."""
    if not _ADDRESS.match(address):
        raise UsageError(f"--scheduler {ascii(address)} is not an address like tcp://HOST:8786")
    return address


def require_distributed() -> None:
    """Fail in one line, before the scan is planned, when the `scan` extra is not installed."""
    _distributed()


def _distributed() -> object:
    try:
        import distributed
    except ImportError:
        raise UsageError(
            "whale-listen scan needs dask.distributed, which is not installed: "
            "pip install 'whale-listen[scan]'"
        ) from None
    return distributed


@contextmanager
def open_client(workers: int, scheduler: str | None) -> Iterator[object]:
    """A distributed Client: on `scheduler`'s cluster, else on a LocalCluster of `workers`
    processes that lives as long as the scan."""
    distributed = _distributed()
    logging.getLogger("distributed").setLevel(logging.ERROR)  # its shutdown chatter
    cluster = None
    try:
        if scheduler is None:
            cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            client = distributed.Client(cluster)
        else:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S)
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except (OSError, TimeoutError, ValueError) as e:
        if cluster is not None:
            cluster.close()
        where = f"the Dask scheduler {scheduler}" if scheduler else "a local Dask cluster"
        raise WhaleError(f"cannot start or reach {where}: {e}") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def worker_count(client: object) -> int:
    """Threads across the cluster's workers now (one per worker process, here)."""
    return sum(client.nthreads().values())
