"""Joining a Ray cluster for a run (``autolabel.scale.ray``) and checking, before anything is written, that it can
run it: each failure a user meets is one ``ConfigError`` line (exit 2).
"""

from __future__ import annotations

import socket
from typing import Any

from autolabel import __version__
from autolabel.errors import ConfigError

CONNECT_TIMEOUT = 5.0


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray on this machine and on the cluster: pip install 'autolabel[ray]'") from None
    return ray


def connect(ray: Any, address: str | None, num_cpus: int | None, runtime_env: dict[str, Any] | None) -> bool:
    """Join the cluster at ``address`` (None: start a local instance). True when this call started Ray (the run
    shuts it down after)."""
    if address not in (None, "auto"):
        preflight(address)
    if ray.is_initialized():
        return False  # the caller's own Ray session (a script that called ray.init)
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "runtime_env": runtime_env,
                               "configure_logging": False}
    if address is None:
        ray.init(num_cpus=num_cpus, **options)
        return True
    try:
        ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot join the Ray cluster at {address}: {first_line(e)}") from None
    return True


def preflight(address: str) -> None:
    """Fail in seconds, in one line, where ``ray.init`` would retry for minutes: a host that does not resolve, a
    port nobody listens on, or a server that is not a Ray head (the GCS speaks gRPC: HTTP/2)."""
    client = address.startswith("ray://")
    hostport = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray {address}: give host:port of the cluster's head (port 6379), ray://host:10001, "
                          "auto, or nothing for a local instance")
    hint = "start one with `ray start --head` and give the address it prints, or --ray without an address"
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT) as conn:
            conn.settimeout(CONNECT_TIMEOUT)
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            head = conn.recv(9)
    except OSError as e:
        raise ConfigError(f"cannot reach a Ray cluster at {address} ({e.strerror or type(e).__name__}): "
                          f"{hint}") from None
    if len(head) < 4 or head[3] != 0x04:  # an HTTP/2 server answers with its SETTINGS frame
        port_hint = "10001 (Ray Client)" if client else "6379 (the GCS; 8265 is the dashboard)"
        raise ConfigError(f"{hostport} answers, but not as a Ray cluster: use the head's port {port_hint}")


def check_nodes(ray: Any, runtime_env: dict[str, Any] | None) -> int:
    """Every alive node has this autolabel (a probe task sent by value: it runs where autolabel is missing).
    Returns the number of alive nodes."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def probe() -> str | None:  # nested: cloudpickle sends it by value, so it runs where autolabel is missing
        import importlib
        import importlib.metadata

        try:
            importlib.import_module("autolabel")
            return importlib.metadata.version("autolabel")
        except (ImportError, importlib.metadata.PackageNotFoundError):
            return None

    task = ray.remote(num_cpus=0, max_retries=0, runtime_env=runtime_env)(probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    found = ray.get([task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                     .remote() for n in nodes])
    for node, version in zip(nodes, found, strict=True):
        where = node.get("NodeManagerAddress", "?")
        if version is None:
            raise ConfigError(f"Ray node {where} has no autolabel: install the project on every node (pip install "
                              "'autolabel[ray]' into the cluster's image) or give a runtime_env that does")
        if version != __version__:
            raise ConfigError(f"Ray node {where} has autolabel {version}, this driver {__version__}: install the "
                              "same version on every node")
    return len(nodes)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
