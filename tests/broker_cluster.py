"""A three-node RabbitMQ cluster on this machine, for the test that takes a broker node away
(tests/test_broker_cluster.py).

The nodes are the installed rabbitmq-server (3.10 on the test machines), started as root beside
the system RabbitMQ, which they leave alone: that one is rabbit@localhost on 127.0.0.1:5672, its
data under /var/lib/rabbitmq, its configuration in /etc/rabbitmq. Here each node has
- its own node name (histoia-r1@localhost, ...), AMQP port (5681-5683) and distribution port
  (25681-25683), all on 127.0.0.1, and the CLI tools their own port range;
- its data, logs, pid file and configuration under one temporary folder, so none of the system
  node's files are read or written (not its rabbitmq.conf, rabbitmq-env.conf or enabled
  plugins: these nodes run no plugin, the management UI included);
- a shared Erlang cookie of their own, in the temporary folder's home. The system node's cookie
  (/var/lib/rabbitmq/.erlang.cookie, which `rabbitmqctl` uses as root too: /usr/sbin/rabbitmqctl
  runs as the rabbitmq user) is never read, so nothing done here can reach the system node.
They register with the system node's epmd (127.0.0.1:4369), which is shared by design (were
none running, the first node would start one, and it would stay, as it does for the system node).

Nodes 2 and 3 join node 1: starting and clustering takes about 15 s on the two-core test
machine (started_in). kill(n) ends node n at once (SIGKILL of its Erlang VM), as a machine
lost would; remove() kills every node and removes the folder, whatever happened, and also what
an interrupted run left.

By hand, for a developer (root):

    .venv/bin/python tests/broker_cluster.py     # starts it, prints the URL; Ctrl-C removes it
    RABBITMQ_CONF_ENV_FILE=/dev/null HOME=<the home it prints> /usr/lib/rabbitmq/bin/rabbitmqctl \\
        -n histoia-r2@localhost cluster_status
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
NODE_PREFIX = "histoia-r"
FIRST_AMQP_PORT = 5681
# Ports for the CLI tools' own Erlang distribution: away from the system's (35672-35682), so
# commands run here never take the ports the system's rabbitmqctl needs.
CLI_DIST_PORTS = (35700, 35719)
# Put on each node's command line, so that remove() finds the nodes of an interrupted run.
MARKER = "-histoia_broker_cluster"


def available() -> tuple[bool, str]:
    """Whether a cluster can be started here, and why not."""
    if os.geteuid() != 0:
        return False, "the nodes are started as root"
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        return False, "rabbitmq-server is not installed"
    return True, ""


@dataclass
class Node:
    number: int
    folder: Path
    proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"{NODE_PREFIX}{self.number}@localhost"

    @property
    def port(self) -> int:
        return FIRST_AMQP_PORT + self.number - 1

    @property
    def pid_file(self) -> Path:
        return self.folder / "beam.pid"

    def env(self, home: Path) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **keep,
            "HOME": str(home),      # $HOME/.erlang.cookie: the cluster's own cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 20000),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(CLI_DIST_PORTS[0]),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(CLI_DIST_PORTS[1]),
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_CONFIG_FILES": str(self.folder / "conf.d" / "*.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            # The Erlang distribution listens on 127.0.0.1 only, as the system node's does.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                f"-kernel inet_dist_use_interface {{127,0,0,1}} {MARKER} {self.folder.parent}",
        }

    def prepare(self) -> None:
        for sub in ("mnesia", "log", "conf.d"):
            (self.folder / sub).mkdir(parents=True)
        (self.folder / "rabbitmq-env.conf").write_text("")
        (self.folder / "enabled_plugins").write_text("[].\n")
        (self.folder / "rabbitmq.conf").write_text(
            "# A node of the test cluster (tests/broker_cluster.py).\n"
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            # Three nodes and the system node share the machine's memory: each raises its memory
            # alarm at a fifth of it rather than the default two fifths.
            "vm_memory_high_watermark.relative = 0.2\n")

    def beam_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def accepts_connections(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False


class BrokerCluster:
    """Three RabbitMQ nodes clustered on this machine; `url` is the failover broker URL."""

    def __init__(self, size: int = 3):
        self.root: Path | None = None
        self.home: Path | None = None
        self.nodes: list[Node] = []
        self.size = size
        self.started_in: float | None = None   # seconds from start() to the nodes clustered

    @property
    def url(self) -> str:
        """Every node, in order (kombu's failover URL): clients connect to node 1 first."""
        return ";".join(f"amqp://guest:guest@127.0.0.1:{n.port}//" for n in self.nodes)

    def node(self, number: int) -> Node:
        return self.nodes[number - 1]

    # -- starting ----------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> BrokerCluster:
        """Start every node at once, then join nodes 2.. to node 1."""
        began = time.monotonic()
        self.remove()   # whatever an interrupted run left (it would hold the ports)
        self.root = Path(tempfile.mkdtemp(prefix="histoia-rabbitmq-"))
        self.home = self.root / "home"
        self.home.mkdir()
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        self.nodes = [Node(n, self.root / f"r{n}") for n in range(1, self.size + 1)]
        for node in self.nodes:
            if node.accepts_connections():
                raise RuntimeError(f"port {node.port} is taken: the cluster's nodes cannot listen there")
            node.prepare()
            with open(node.folder / "log" / "server.out", "wb") as out:
                node.proc = subprocess.Popen(
                    [str(RABBITMQ_BIN / "rabbitmq-server")], cwd=node.folder, env=node.env(self.home),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            self._wait_ready(node, deadline)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        running = self.ctl(first, "eval", "length(rabbit_nodes:all_running()).").strip()
        if running != str(self.size):
            raise RuntimeError(f"the cluster has {running} running nodes, not {self.size}; see {self.root}")
        self.started_in = time.monotonic() - began
        return self

    def _wait_ready(self, node: Node, deadline: float) -> None:
        # The AMQP listener opens once the node has booted.
        while not node.accepts_connections():
            if node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited at start ({node.proc.returncode}); "
                                   f"see {node.folder / 'log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} did not start; see {node.folder / 'log'}")
            time.sleep(0.2)

    def ctl(self, node: Node, *args: str, timeout: float = 60.0) -> str:
        """rabbitmqctl against `node`, with the cluster's cookie; its output. Raises on failure."""
        result = subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-n", node.name, *args],
                                env=node.env(self.home), capture_output=True, text=True, timeout=timeout,
                                check=False)
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {node.name}: {result.stdout}{result.stderr}")
        return result.stdout

    def queues(self, node_number: int = 1) -> dict[str, dict]:
        """The queues as `node_number` sees them: name -> type, leader, members, messages."""
        out = self.ctl(self.node(node_number), "list_queues", "--no-table-headers",
                       "name", "type", "leader", "members", "messages")
        found = {}
        for line in out.splitlines():
            name, kind, leader, members, messages = line.split("\t")
            found[name] = {"type": kind, "leader": leader, "members": members, "messages": int(messages)}
        return found

    # -- faults ------------------------------------------------------------------------------
    def kill(self, number: int) -> None:
        """End node `number` at once: SIGKILL of its Erlang VM, so no connection is closed
        cleanly and no peer is told (its clients see their sockets reset)."""
        node = self.node(number)
        pid = node.beam_pid()
        if pid is None:   # no pid file (yet): ask the node itself
            pid = int(self.ctl(node, "eval", "os:getpid().").strip().strip('"'))
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while node.accepts_connections() or _alive(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} (pid {pid}) is still there after SIGKILL")
            time.sleep(0.1)

    # -- removing ----------------------------------------------------------------------------
    def remove(self) -> None:
        """Kill every node of this cluster and of any earlier, interrupted one; remove their
        folders. Safe to call at any point, and more than once."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                try:
                    os.killpg(node.proc.pid, signal.SIGKILL)   # the script and its Erlang VM
                except ProcessLookupError:
                    pass
                node.proc.wait(timeout=30)
        roots = {self.root} if self.root else set()
        for pid, root in _marked_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            roots.add(root)
        for root in roots:
            if root is not None and root.name.startswith("histoia-rabbitmq-"):
                shutil.rmtree(root, ignore_errors=True)
        self.nodes, self.root, self.home = [], None, None

    def __enter__(self) -> BrokerCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.remove()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, its parent script not yet woken) is gone for what matters here.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def _marked_processes() -> list[tuple[int, Path]]:
    """(pid, cluster folder) of every Erlang VM started by this module, from its command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if MARKER.encode() in argv:
            at = argv.index(MARKER.encode())
            if at + 1 < len(argv):
                found.append((int(entry.name), Path(argv[at + 1].decode())))
    return found


def main() -> int:
    ok, why = available()
    if not ok:
        print(why, file=sys.stderr)
        return 1
    # Ctrl-C, or a plain kill, removes the cluster (also when started in the background, where
    # SIGINT comes ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cluster = BrokerCluster()
    try:
        cluster.start()
        print(f"started and clustered in {cluster.started_in:.1f} s; data under {cluster.root}")
        print(f"CELERY_BROKER_URL='{cluster.url}' CELERY_BROKER_QUEUE_TYPE=quorum")
        print(f"HOME={cluster.home} for rabbitmqctl; Ctrl-C removes the cluster")
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
