"""Ray nodes started as child processes of this one (`ray start --block`) and stopped by PID.

What the Ray tests and `eval/bench_ray.py` use to stand up a cluster of their own on one host
(a head, plus worker nodes joining it), and what a user can use for a one-machine cluster in a
script. `ray stop` would end every Ray process of the host, other users' too; here each node
is a `ray start --block` process whose descendants are the node's processes (GCS, raylet,
agents, workers), and `stop` signals it, waits, then ends whatever of its process tree is
left, by PID. Each cluster gets its own temporary folder (sessions, sockets, logs) and its own
authentication token (Ray 2.60 token auth, passed in the environment, never written to
~/.ray): a driver joins with `node.driver_env` in its environment.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from ..errors import GenLinkerError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    """One Ray node: the head (`head_address` None) or a worker joining `head_address`."""

    def __init__(self, head_address: str | None = None, num_cpus: float = 1, object_store_mb: int = 100,
                 resources: dict | None = None, temp_dir: str | None = None, token: str | None = None) -> None:
        """A worker node needs the head's `temp_dir` (one host) and `token`."""
        if head_address is not None and token is None:
            raise ValueError("a worker node needs the head's token (RayNode.token)")
        self.head_address, self.num_cpus = head_address, num_cpus
        self.token = token or secrets.token_hex(32)
        self.object_store_mb, self.resources = object_store_mb, resources
        self.own_temp = temp_dir is None and head_address is None
        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp") if self.own_temp else temp_dir
        self.port = free_port() if head_address is None else None
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []

    @property
    def driver_env(self) -> dict[str, str]:
        """Environment variables a driver (or another node) needs to join this cluster."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0"}

    def join(self, num_cpus: float = 1, **kwargs) -> "RayNode":
        """A worker node for this head (not started)."""
        return RayNode(head_address=self.address, num_cpus=num_cpus, temp_dir=self.temp_dir, token=self.token, **kwargs)

    @property
    def address(self) -> str:
        """HOST:PORT of the cluster (the head's GCS), for `ray.init(address=...)` and `--address`."""
        return self.head_address or f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> "RayNode":
        import json

        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address", "127.0.0.1",
               f"--num-cpus={self.num_cpus:g}", f"--object-store-memory={self.object_store_mb * 2**20}",
               "--disable-usage-stats"]
        if self.head_address is None:
            cmd += ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}"]
        else:
            cmd += [f"--address={self.head_address}"]
        if self.resources:
            cmd += [f"--resources={json.dumps(self.resources)}"]
        env = {**os.environ, **self.driver_env}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        started = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:
                self.log.append(line.rstrip())
                if "Ray runtime started" in line:
                    started.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not started.wait(0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise GenLinkerError("ray start failed:\n" + "\n".join(self.log[-30:]))
        return self

    def stop(self, timeout: float = 5) -> None:
        """End this node: SIGTERM to each of its processes (the `ray start --block` process and
        its descendants: GCS, raylet, agents, workers), SIGKILL to those still alive after
        `timeout` seconds; each by PID. (`ray start --block` alone takes ~40 s to wind down.)"""
        import psutil

        if self.proc is None:
            return
        try:
            tree = [psutil.Process(self.proc.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        for p in reversed(tree):
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        self.proc.wait()
        self.proc = None
        if self.own_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "RayNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for_nodes(head: RayNode, n: int, timeout: float = 60) -> None:
    """Block until `head`'s cluster has `n` live nodes (asked by a fresh driver process)."""
    code = ("import ray,sys,time; ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR')\n"
            "t=time.time()\n"
            "while sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]) and time.time()-t < float(sys.argv[3]):"
            " time.sleep(0.5)\n"
            "sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= int(sys.argv[2]) else 1)")
    env = {**os.environ, **head.driver_env}
    if subprocess.run([sys.executable, "-c", code, head.address, str(n), str(timeout)], env=env,
                      timeout=timeout + 60).returncode:
        raise GenLinkerError(f"the Ray cluster at {head.address} did not reach {n} live nodes in {timeout:.0f}s")


__all__ = ["RayNode", "free_port", "wait_for_nodes"]
