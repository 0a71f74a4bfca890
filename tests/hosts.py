"""Worker hosts on this one machine, for the multi-host fault suite (tests/test_hosts.py).

Each worker host is a Linux network namespace with its own address and host name, joined to the
main host by a virtual link (a veth pair on a bridge). The main host is this machine's own
namespace, where the web process, PostgreSQL and RabbitMQ run; a worker host reaches them only
over its link, at the main host's link address (MAIN_ADDRESS). PostgreSQL and RabbitMQ listen on
127.0.0.1 here, so the main host forwards its link address's ports to them with socat, as a
firewall's port forward would; what reaches them comes from the worker hosts' links.

The media folder is shared as a file server would share it: each worker host mounts the main
host's folder at the same path (a bind mount in the host's own mount namespace stands in for the
NFS mount of docs/deploy.md), so a worker reads slides and writes results through a mount, not
through a folder it merely happens to share.

Faults, as a lab would meet them:
- lose(): the host vanishes (power cut): its link goes silent first, then every process in it is
  killed, so no connection is closed cleanly;
- partition(): its link goes down at the main host's end, until heal(): every packet is lost,
  both ways, without an error on the connections already open (a new connection is refused as
  "no route to host", as on a LAN whose switch port went dark);
- slow(): the host's processes get a fraction of one core (a CPU quota on the host's cgroup),
  as an old machine or one busy with something else would.

Needs root (ip netns, tc). By hand, for a developer:

    sudo .venv/bin/python tests/hosts.py up cpu-1 gpu-1    # prints each host's address
    sudo ip netns exec hia-cpu-1 ping -c1 10.213.0.1
    sudo .venv/bin/python tests/hosts.py down                # removes every host made here

Everything is named with the `hia` prefix, and `down` (or HostNetwork.remove()) removes all of
it, whatever an interrupted run left.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "hia"
BRIDGE = f"{PREFIX}-br"
SUBNET = "10.213.0"
MAIN_ADDRESS = f"{SUBNET}.1"
# The main host's services a worker host needs, forwarded from MAIN_ADDRESS to 127.0.0.1.
FORWARDED_PORTS = (5432, 5672)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


# The CPU controller: cgroup v1's own hierarchy, or the unified (v2) one.
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")


def _cgroup_root() -> Path | None:
    if (CGROUP_V1 / "cpu.cfs_quota_us").exists():
        return CGROUP_V1
    controllers = CGROUP_V2 / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        (CGROUP_V2 / "cgroup.subtree_control").write_text("+cpu")
        return CGROUP_V2
    return None


def available() -> tuple[bool, str]:
    """Whether hosts can be made here, and why not."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    for tool in ("ip", "socat", "unshare"):
        if shutil.which(tool) is None:
            return False, f"{tool} is not installed"
    if _cgroup_root() is None:
        return False, "no cgroup CPU controller to slow a host down with"
    return True, ""


@dataclass
class Host:
    """One worker host: its namespace, the main-side end of its link, address and host name."""

    name: str
    number: int
    shared: tuple[str, ...] = ()   # folders of the main host mounted at the same path

    @property
    def namespace(self) -> str:
        return f"{PREFIX}-{self.name}"

    @property
    def link(self) -> str:
        # Interface names are limited to 15 characters: the main-side end is named by number.
        return f"{PREFIX}{self.number}m"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{10 + self.number}"

    @property
    def hostname(self) -> str:
        return f"{self.name}-host"

    @property
    def cgroup(self) -> Path:
        return _cgroup_root() / self.namespace

    def command(self, argv: list[str]) -> list[str]:
        """argv run inside this host: its network namespace, its CPU cgroup, its own host name,
        and its own mounts of the shared folders."""
        # The cgroup is joined first: `ip netns exec` mounts the namespace's own /sys, where the
        # cgroup folders are not. unshare --mount makes the mounts private to the host.
        mounts = "".join(f" && mount --bind {shlex.quote(path)} {shlex.quote(path)}" for path in self.shared)
        setup = f'hostname {self.hostname}{mounts} && exec "$@"'
        inside = ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "--mount", "--",
                  "sh", "-c", setup, "sh", *argv]
        return ["sh", "-c", f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"', "sh", *inside]

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv), start_new_session=True, **kwargs)

    @staticmethod
    def mount_points(pid: int) -> set[str]:
        """Where something is mounted, as process `pid` sees it."""
        with open(f"/proc/{pid}/mountinfo") as fh:
            return {line.split()[4] for line in fh}

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self.namespace, check=False).stdout
        return [int(p) for p in out.split()]

    # -- faults ---------------------------------------------------------------------------
    def partition(self) -> None:
        _ip("link", "set", self.link, "down", check=False)   # a host already gone has no link

    def heal(self) -> None:
        _ip("link", "set", self.link, "up")

    def slow(self, share_of_a_core: float = 0.25) -> None:
        period = 100_000
        quota = int(period * share_of_a_core)
        if self.cgroup.parent == CGROUP_V1:
            (self.cgroup / "cpu.cfs_period_us").write_text(str(period))
            (self.cgroup / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (self.cgroup / "cpu.max").write_text(f"{quota} {period}")

    def lose(self) -> None:
        """The host vanishes: its link goes silent, then all its processes die at once."""
        self.partition()
        self.kill_all()

    def kill_all(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class HostNetwork:
    """The bridge on the main host, the port forwards, and the worker hosts joined to it."""

    def __init__(self, shared: tuple[str, ...] = ()):
        self.shared = tuple(shared)
        self.hosts: dict[str, Host] = {}
        self.forwards: list[subprocess.Popen] = []
        self.made = 0   # hosts made so far: a replacement never takes a lost host's number

    def create(self) -> HostNetwork:
        self.remove()   # whatever an interrupted run left
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{MAIN_ADDRESS}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for port in FORWARDED_PORTS:
            self.forwards.append(subprocess.Popen(
                ["socat", f"TCP-LISTEN:{port},bind={MAIN_ADDRESS},fork,reuseaddr", f"TCP:127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        return self

    def add(self, name: str) -> Host:
        self.made += 1
        host = Host(name, self.made, self.shared)
        self.hosts[name] = host
        _ip("netns", "add", host.namespace)
        host.cgroup.mkdir(exist_ok=True)
        _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
        _ip("link", "set", host.link, "master", BRIDGE)
        _ip("link", "set", host.link, "up")
        inside = ["netns", "exec", host.namespace, "ip"]
        _ip(*inside, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip(*inside, "link", "set", "eth0", "up")
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "route", "add", "default", "via", MAIN_ADDRESS)
        self._wait_reachable(host)
        return host

    def _wait_reachable(self, host: Host, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        probe = host.command([sys.executable, "-c",
                              f"import socket; socket.create_connection(('{MAIN_ADDRESS}', 5432), 1).close()"])
        while subprocess.run(probe, capture_output=True, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{host.name} cannot reach the main host at {MAIN_ADDRESS}")
            time.sleep(0.2)

    def drop(self, name: str) -> None:
        """Remove a host (after lose(), or at the end): its processes, namespace and link."""
        host = self.hosts.pop(name)
        host.lose()
        _ip("netns", "del", host.namespace, check=False)
        _ip("link", "del", host.link, check=False)
        _remove_cgroup(host.cgroup)

    def remove(self) -> None:
        """Remove every host, the forwards and the bridge, including those of an earlier run."""
        for name in list(self.hosts):
            self.drop(name)
        for namespace in _ip("netns", "list", check=False).stdout.split("\n"):
            namespace = namespace.split(" ")[0]
            if namespace.startswith(f"{PREFIX}-"):
                host = Host(namespace.removeprefix(f"{PREFIX}-"), 0)
                host.kill_all()
                _ip("netns", "del", namespace, check=False)   # takes both ends of its link
                _remove_cgroup(host.cgroup)
        for proc in self.forwards:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.forwards.clear()
        # socat listeners left by an earlier, interrupted run.
        subprocess.run(["pkill", "-f", f"bind={MAIN_ADDRESS}"], capture_output=True, check=False)
        for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(PREFIX):
                _ip("link", "del", name, check=False)


def _remove_cgroup(path: Path) -> None:
    # A cgroup can be removed once its processes are gone, which takes a moment after SIGKILL.
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    ok, why = available()
    if not ok:
        print(why, file=sys.stderr)
        return 1
    if argv[:1] == ["up"] and len(argv) > 1:
        network = HostNetwork().create()
        for name in argv[1:]:
            host = network.add(name)
            print(f"{host.name}: namespace {host.namespace}, address {host.address}, host name {host.hostname}")
        print(f"main host: {MAIN_ADDRESS} (PostgreSQL {FORWARDED_PORTS[0]}, RabbitMQ {FORWARDED_PORTS[1]})")
        print("The port forwards run until `down`.")
        for proc in network.forwards:   # leave them running after this script exits
            proc.returncode = 0
        return 0
    if argv[:1] == ["down"]:
        HostNetwork().remove()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
