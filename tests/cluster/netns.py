"""A throw-away multi-node SLURM cluster on one host: every compute node is its own network host.

:class:`MultiNodeCluster` extends the one-node :class:`~.harness.SlurmCluster`:
each compute node ``node1``, ``node2``, ... is a Linux network namespace
(``ip netns add``) with its own address on a private /24, joined to a bridge
in the root namespace by a veth pair, and its own host name (a UTS namespace,
``unshare --uts``). One ``slurmd -N nodeN`` runs inside each namespace with its
own spool directory and log file; ``slurmctld`` and ``munged`` run in the root
namespace, where the bridge holds the controller's address. Every slurmd (and so
every job process it starts) also has a private mount namespace in which the
cluster's own hosts file (node names and the controller's host name, in the
cluster's directory) is bind-mounted over ``/etc/hosts``, so node names resolve
inside the nodes while the machine's ``/etc/hosts`` is never touched, and a
private tmpfs is mounted on ``/dev/shm``: a node's shared memory is its own, as
on separate hosts, and what killed jobs leave there goes with the node. In
``slurm.conf`` each node has ``NodeName=nodeN NodeAddr=<its address>``.
(``ip netns exec`` is not used to enter a node: it remounts ``/sys``, which
hides the cgroup mounts slurmd looks for.)

So an MPI job launched by ``srun`` spans several hosts as far as SLURM and MPI
can tell: ranks on different nodes reach each other only over TCP between the
namespace addresses (through the bridge), and a node's link can be taken down
(:meth:`MultiNodeCluster.link_down`) or the node crashed (:meth:`MultiNodeCluster.crash_node`)
while the others keep running.

Names are unique per cluster (``mpl<tag>...``), so several clusters can run at
once on one machine. Stopping does what the one-node cluster does, then ends
every process left in the namespaces and deletes the namespaces, the veth
pairs and the bridge it made.

Needs, besides the one-node cluster's packages, ``ip`` (iproute2),
``nsenter`` and ``unshare`` (util-linux), root, and a kernel that lets root create network
namespaces (:func:`netns_unavailable_reason` tries).

Command-line use (keeps the cluster up until Ctrl-C)::

    python -m tests.cluster.netns [NODES]
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from .harness import PARTITION, ClusterError, SlurmCluster, _real_memory_mb, find_binary, unavailable_reason

NODES = 3
"""Compute nodes started by default."""

NETNS_BINARIES = ("ip", "nsenter", "unshare")
"""Programs the multi-node cluster needs on top of the one-node cluster's (iproute2, util-linux)."""

IFACE = "eth0"
"""Name of every node's network interface inside its namespace (MPI transports can be pointed at it)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([find_binary("ip") or "ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)} failed with status {r.returncode}: {r.stderr.strip()}")
    return r


def netns_unavailable_reason() -> str | None:
    """Why network-namespace nodes cannot be made here (one sentence), or None if they can."""
    reason = unavailable_reason()
    if reason:
        return reason
    missing = [b for b in NETNS_BINARIES if find_binary(b) is None]
    if missing:
        return (f"{', '.join(missing)} not installed; the multi-node cluster needs iproute2 and util-linux "
                "(apt-get install -y iproute2 util-linux)")
    r = subprocess.run([find_binary("unshare") or "unshare", "--mount", "--uts", "true"], capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        return f"mount and UTS namespaces cannot be created here (unshare --mount --uts: {r.stderr.strip()})"
    probe = f"mplprobe{os.getpid()}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"network namespaces cannot be created here (ip netns add: {r.stderr.strip()})"
    try:
        r = _ip("link", "add", f"{probe[:11]}v", "type", "veth", "peer", "name", f"{probe[:11]}p", check=False)
        if r.returncode != 0:
            return f"veth pairs cannot be created here (ip link add type veth: {r.stderr.strip()})"
        _ip("link", "del", f"{probe[:11]}v", check=False)
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = _ip("-o", "-4", "addr", "show", check=False).stdout
    nets = []
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            nets.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that overlaps no address configured in the root namespace."""
    used = _used_networks()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(254) + 1}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise ClusterError("no free 10.x.y.0/24 subnet found for the cluster's network")


class MultiNodeCluster(SlurmCluster):
    """A SLURM cluster of ``nodes`` compute nodes, each in its own network namespace on this host."""

    slurmd_timeout = 5
    message_timeout = 5

    def __init__(self, root: str | os.PathLike | None = None, *, nodes: int = NODES, cpus: int = 2):
        super().__init__(root, cpus=cpus)
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.tag = secrets.token_hex(3)
        self.node_names = [f"node{i}" for i in range(1, nodes + 1)]
        self.subnet: ipaddress.IPv4Network | None = None
        self.bridge = f"mpl{self.tag}br"
        self.addrs: dict[str, str] = {}
        self.hosts_file = self.root / "etc" / "hosts"
        self._made: list[tuple[str, str]] = []  # ("netns" | "link", name), in creation order

    # -- names -----------------------------------------------------------

    def namespace(self, node: str) -> str:
        """The network namespace of ``node``."""
        return f"mpiland-{self.tag}-{node}"

    def veth(self, node: str) -> str:
        """The root-namespace end of ``node``'s veth pair (taking it down cuts the node off)."""
        return f"mpl{self.tag}{node[4:]}"

    # -- configuration -------------------------------------------------

    def nodes_conf_text(self) -> str:
        """One NodeName line per namespace node (its address as NodeAddr) and a partition of all of them."""
        mem = max(256, _real_memory_mb() // len(self.node_names))
        lines = [f"NodeName={n} NodeAddr={self.addrs[n]} CPUs={self.cpus} RealMemory={mem} State=UNKNOWN"
                 for n in self.node_names]
        lines.append(f"PartitionName={PARTITION} Nodes={','.join(self.node_names)} Default=YES MaxTime=INFINITE "
                     "State=UP")
        return "\n".join(lines) + "\n"

    def hosts_text(self) -> str:
        """The /etc/hosts every node sees: its loopback, the controller's host name and every node."""
        lines = ["127.0.0.1 localhost", f"{self.controller_addr} {self.hostname}"]
        lines += [f"{self.addrs[n]} {n}" for n in self.node_names]
        return "\n".join(lines) + "\n"

    # -- lifecycle -----------------------------------------------------

    def start(self, timeout: float = 60.0) -> "MultiNodeCluster":
        """Make the network, then start munged, slurmctld and one slurmd per node; wait until all are idle."""
        reason = netns_unavailable_reason()
        if reason:
            raise ClusterError(reason)
        try:
            self._make_network()
        except BaseException:
            self._remove_network()
            raise
        super().start(timeout)
        return self

    def _make_network(self) -> None:
        self.subnet = _free_subnet()
        hosts = list(self.subnet.hosts())
        self.controller_addr = str(hosts[0])
        self.addrs = {n: str(hosts[10 + i]) for i, n in enumerate(self.node_names)}
        _ip("link", "add", self.bridge, "type", "bridge")
        self._made.append(("link", self.bridge))
        _ip("addr", "add", f"{self.controller_addr}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self.hosts_file.parent.mkdir(parents=True, exist_ok=True)
        self.hosts_file.write_text(self.hosts_text())
        for node in self.node_names:
            ns, veth, peer = self.namespace(node), self.veth(node), f"{self.veth(node)}p"
            _ip("netns", "add", ns)
            self._made.append(("netns", ns))
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            self._made.append(("link", veth))
            _ip("link", "set", peer, "netns", ns)
            _ip("-n", ns, "link", "set", peer, "name", IFACE)
            _ip("-n", ns, "addr", "add", f"{self.addrs[node]}/{self.subnet.prefixlen}", "dev", IFACE)
            _ip("-n", ns, "link", "set", IFACE, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")

    def _start_slurmd(self) -> None:
        for node in self.node_names:
            self._spawn_slurmd(node)

    def _spawn_slurmd(self, node: str) -> None:
        """``slurmd -N node`` inside the node's network namespace, with the node's name as host name."""
        self._spawn(f"slurmd-{node}", [
            find_binary("nsenter") or "nsenter", f"--net=/run/netns/{self.namespace(node)}",
            find_binary("unshare") or "unshare", "--mount", "--uts", "--",
            "/bin/sh", "-c",
            'mount --bind "$0" /etc/hosts && mount -t tmpfs -o mode=1777 tmpfs /dev/shm && hostname "$1" && shift '
            '&& exec "$@"',
            str(self.hosts_file), node,
            find_binary("slurmd") or "slurmd", "-D", "-N", node, "-f", str(self.conf),
        ])

    def stop(self) -> None:
        """Stop the cluster (see :meth:`SlurmCluster.stop`), then remove the namespaces, links and hosts files."""
        try:
            super().stop()
        finally:
            self._remove_network()

    def _remove_network(self) -> None:
        for node in self.node_names:
            self._kill_namespace(node)
        for kind, name in reversed(self._made):
            if kind == "netns":
                _ip("netns", "del", name, check=False)
            elif kind == "link":
                _ip("link", "del", name, check=False)
        self._made.clear()

    # -- nodes -----------------------------------------------------------

    def namespace_pids(self, node: str) -> list[int]:
        """Processes running in ``node``'s network namespace."""
        r = _ip("netns", "pids", self.namespace(node), check=False)
        return [int(p) for p in r.stdout.split() if p.isdigit()]

    def _kill_namespace(self, node: str) -> None:
        if ("netns", self.namespace(node)) not in self._made:
            return
        for _ in range(3):
            pids = self.namespace_pids(node)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)

    def task_pids(self, job_id: str) -> dict[str, dict[int, int]]:
        """For each node running some now: the job's Python task processes in its namespace, by ``SLURM_PROCID``."""
        tasks: dict[str, dict[int, int]] = {}
        for node in self.node_names:
            found = {}
            for pid in self.namespace_pids(node):
                env = _environ(pid)
                if env.get("SLURM_JOB_ID") == str(job_id) and "SLURM_PROCID" in env and _comm(pid).startswith("python"):
                    found[int(env["SLURM_PROCID"])] = pid
            if found:
                tasks[node] = found
        return tasks

    def task_ranks(self, job_id: str) -> dict[str, list[int]]:
        """For each node running some now: the ``SLURM_PROCID`` of the job's task processes in its namespace."""
        return {node: sorted(found) for node, found in self.task_pids(job_id).items()}

    def link_down(self, node: str) -> None:
        """Take ``node``'s veth link down: the node stays up but no packet reaches it or leaves it."""
        _ip("link", "set", self.veth(node), "down")

    def link_up(self, node: str) -> None:
        """Bring ``node``'s veth link back up."""
        _ip("link", "set", self.veth(node), "up")

    def crash_node(self, node: str) -> None:
        """SIGKILL every process on ``node`` (slurmd, slurmstepd, the job's tasks), as a node crash would."""
        self._kill_namespace(node)
        p = self._procs.pop(f"slurmd-{node}", None)
        if p is not None:
            p.wait(10)

    def kill_tasks(self, job_id: str, node: str) -> None:
        """SIGKILL the job's task processes on ``node`` (as the kernel's OOM killer would); slurmd stays."""
        for pid in self.task_pids(job_id).get(node, {}).values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def restart_node(self, node: str) -> None:
        """Start ``node``'s slurmd again (after :meth:`crash_node`)."""
        self._spawn_slurmd(node)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until every node is idle again (e.g. after a fault, before the next job)."""
        self._wait_for(self._node_idle, timeout, "the nodes did not all become idle")


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


if __name__ == "__main__":  # pragma: no cover - manual use
    c = MultiNodeCluster(nodes=int(sys.argv[1]) if len(sys.argv) > 1 else NODES)
    c.start()
    print(f"cluster of {len(c.node_names)} nodes up in {c.startup_seconds:.1f} s on {c.subnet}; "
          f"use: export SLURM_CONF={c.conf}")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
