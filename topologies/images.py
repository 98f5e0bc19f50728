"""Docker images of the testbed, built offline from Debian's packages.

No container registry is reachable from the lab machines, so nothing is pulled: a Debian
bookworm root file system is made by ``mmdebstrap`` from Debian's package mirror and
imported as the base image; the UE image is a Dockerfile on top of it
(``nodes/docker/ue.Dockerfile``). Each image carries a label with the hash of its inputs and
is rebuilt only when they change.

Containers run the project's Python from the host: the repository (with its ``.venv`` made
from Debian's ``/usr/bin/python3``) is bind-mounted read-only at the same path, and the image
has the very same interpreter, so no Python package is installed into an image.

    python -m testbed build-images     # idempotent
"""
from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ROOT / "nodes" / "docker"
LABEL = "testbed.inputs"

BASE_IMAGE = "mec-testbed/base:bookworm"
UE_IMAGE = "mec-testbed/ue:latest"
# Mininet configures interfaces with ifconfig (net-tools) and the userspace OVS datapath
# needs TX checksum offload turned off with ethtool inside each host.
BASE_PACKAGES = ["python3", "bash", "iproute2", "net-tools", "iputils-ping", "ethtool",
                 "iperf3", "procps", "ca-certificates"]
SUITE = "bookworm"


def _hash(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


def base_inputs() -> str:
    return _hash(SUITE.encode(), " ".join(sorted(BASE_PACKAGES)).encode())


def ue_inputs() -> str:
    return _hash(base_inputs().encode(), (DOCKERFILES / "ue.Dockerfile").read_bytes())


def _current_label(client: docker.DockerClient, name: str) -> str | None:
    try:
        return (client.images.get(name).labels or {}).get(LABEL)
    except docker.errors.ImageNotFound:
        return None


def build_base(client: docker.DockerClient) -> bool:
    """Make the Debian base image with mmdebstrap; return True if it was (re)built."""
    want = base_inputs()
    if _current_label(client, BASE_IMAGE) == want:
        return False
    with tempfile.TemporaryDirectory(prefix="testbed-rootfs-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        subprocess.run(["mmdebstrap", "--variant=apt", "--quiet",
                        "--include=" + ",".join(BASE_PACKAGES), SUITE, str(tar)], check=True)
        repo, tag = BASE_IMAGE.split(":")
        client.api.import_image_from_file(str(tar), repository=repo, tag=tag,
                                          changes=[f"LABEL {LABEL}={want}", 'CMD ["/bin/bash"]'])
    if _current_label(client, BASE_IMAGE) != want:
        raise RuntimeError(f"docker import of {BASE_IMAGE} did not produce the expected image")
    return True


def build_ue(client: docker.DockerClient) -> bool:
    """Build the UE client image from its Dockerfile; return True if it was (re)built."""
    want = ue_inputs()
    if _current_label(client, UE_IMAGE) == want:
        return False
    client.images.build(path=str(DOCKERFILES), dockerfile="ue.Dockerfile", tag=UE_IMAGE,
                        buildargs={"BASE": BASE_IMAGE}, labels={LABEL: want}, rm=True,
                        network_mode="none")
    return True


def build_all() -> None:
    client = docker.from_env()
    for name, fn in ((BASE_IMAGE, build_base), (UE_IMAGE, build_ue)):
        t0 = time.monotonic()
        built = fn(client)
        size = client.images.get(name).attrs["Size"] / 2**20
        state = f"built in {time.monotonic() - t0:.1f} s" if built else "up to date"
        print(f"SETUP:image {name}: {state}, {size:.0f} MiB", flush=True)
