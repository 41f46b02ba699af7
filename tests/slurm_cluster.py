"""A throwaway single-node SLURM cluster on 127.0.0.1, for the tests.

:func:`slurm_cluster` starts Debian's ``munged``, ``slurmctld`` and ``slurmd`` (packages
``munge`` and ``slurm-wlm``) with every file (key, sockets, state, spool, logs) under one
folder, waits until the node is idle, and on exit cancels the jobs left and stops every daemon
and job process it started. Nothing under ``/etc`` or ``/run`` is used or changed, so it runs
beside a system's own SLURM. It must run as root (slurmd starts jobs as their user).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Programs the cluster needs, with the Debian package that has each.
BINARIES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd",
            "sbatch": "slurm-client", "squeue": "slurm-client", "sinfo": "slurm-client",
            "scancel": "slurm-client", "scontrol": "slurm-client"}
#: The one node's name (slurmd is told it with ``-N``, whatever the machine's hostname).
NODE = "node1"
_SEARCH_PATH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))


class ClusterError(RuntimeError):
    """The cluster could not be started."""


@dataclass(frozen=True)
class SlurmCluster:
    """A running cluster: its folder, ``slurm.conf`` and the environment its clients need."""

    root: Path
    conf: Path
    env: dict[str, str]

    def run(self, *command: str) -> subprocess.CompletedProcess:
        """Run a SLURM client (``sinfo``, ``squeue``...) against this cluster."""
        return subprocess.run(command, env=self.env, capture_output=True, text=True,
                              timeout=30, check=False)

    def log(self, name: str) -> str:
        """A daemon's log: ``slurmctld``, ``slurmd`` or ``munged``."""
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""


def missing_binaries() -> list[str]:
    """``program (package)`` for each program :data:`BINARIES` that is not installed."""
    return [f"{name} ({package})" for name, package in BINARIES.items()
            if shutil.which(name, path=_SEARCH_PATH) is None]


def _free_ports(count: int) -> tuple[int, ...]:
    """*count* distinct TCP ports free on 127.0.0.1 now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return tuple(sock.getsockname()[1] for sock in socks)


def _real_memory_mb() -> int:
    """What ``slurmd -C`` reports, less a little so the node is never drained as too small."""
    with open("/proc/meminfo") as meminfo:
        total_kb = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1])
    return max(total_kb // 1024 - 256, 256)


def write_conf(root: Path, *, cpus: int, ports: tuple[int, int], munge_socket: Path) -> Path:
    """``root/slurm.conf``: one node (``cpus`` CPUs, cores only scheduled) on 127.0.0.1."""
    ctld_port, slurmd_port = ports
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=bidsreface-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=2
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MailProg=/bin/true
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "run" / "slurmctld.pid"}
SlurmdPidFile={root / "run" / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
NodeName={NODE} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={cpus} \
RealMemory={_real_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _wait(what: str, ready, timeout: float, logs) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} did not happen within {timeout:.0f} s\n{logs()}")
        time.sleep(0.2)


def _our_processes(conf: Path, exclude: set[int]) -> list[int]:
    """Processes whose environment names this cluster's ``slurm.conf`` (daemons' children,
    ``slurmstepd``, job scripts), except *exclude*."""
    marker = f"SLURM_CONF={conf}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in exclude:
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:  # gone, or a kernel thread
            continue
        if marker in environ.split(b"\0"):
            found.append(int(proc.name))
    return found


def _stop(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def slurm_cluster(root: str | os.PathLike, *, cpus: int | None = None,
                  timeout: float = 60) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd under *root*; yield once the node is idle.

    Raises :class:`ClusterError` (with the daemons' logs) when a program is missing or the
    node does not come up within *timeout* seconds. On exit, jobs left are cancelled and every
    daemon, ``slurmstepd`` and job process of this cluster is stopped.
    """
    missing = missing_binaries()
    if missing:
        raise ClusterError(f"SLURM is not installed: missing {', '.join(missing)}; "
                           f"apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        raise ClusterError("the test SLURM cluster must run as root")
    root = Path(root)
    for sub in ("state", "spool", "run", "log", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    munge_socket = root / "munge" / "munge.socket"
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = write_conf(root, cpus=cpus or os.cpu_count() or 1,
                      ports=_free_ports(2), munge_socket=munge_socket)
    env = {**os.environ, "SLURM_CONF": str(conf),
           "PATH": os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin"))}
    env.setdefault("LOGNAME", getpass.getuser())
    cluster = SlurmCluster(root, conf, env)
    logdir = root / "log"

    def logs() -> str:
        return "\n".join(f"--- {path.name} (end)\n{path.read_text(errors='replace')[-3000:]}"
                         for path in sorted(logdir.iterdir()))

    daemons: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        with open(logdir / f"{name}.out", "ab") as out:
            daemons.append(subprocess.Popen(
                [shutil.which(name, path=_SEARCH_PATH), *args], env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    def ping() -> bool:
        for daemon in daemons:
            if daemon.poll() is not None:
                raise ClusterError(f"{Path(daemon.args[0]).name} exited with code "
                                   f"{daemon.returncode}\n{logs()}")
        return True

    try:
        # --force: the socket's folder may sit in a private (0700) temporary folder
        start("munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
              f"--log-file={logdir / 'munged.log'}", f"--pid-file={root / 'run' / 'munged.pid'}",
              f"--seed-file={root / 'munge' / 'munged.seed'}")
        _wait("munged's socket", lambda: ping() and munge_socket.exists(), timeout, logs)
        start("slurmctld", "-D", "-f", str(conf))
        _wait("slurmctld answering",
              lambda: ping() and "is UP" in cluster.run("scontrol", "ping").stdout,
              timeout, logs)
        start("slurmd", "-D", "-N", NODE, "-f", str(conf))
        _wait(f"node {NODE} idle", lambda: ping() and cluster.run(
            "sinfo", "-h", "-N", "-n", NODE, "-o", "%T").stdout.strip() == "idle",
            timeout, logs)
        yield cluster
    finally:
        if daemons and daemons[-1].poll() is None and len(daemons) == 3:
            jobs = cluster.run("squeue", "-h", "-o", "%i").stdout.split()
            if jobs:
                cluster.run("scancel", *jobs)
                with contextlib.suppress(ClusterError):
                    _wait("jobs cancelled",
                          lambda: not cluster.run("squeue", "-h", "-o", "%i").stdout.split(),
                          10, logs)
        for daemon in reversed(daemons):
            _stop(daemon)
        # slurmstepd daemonizes, so it and the jobs it runs are not the daemons' children
        for pid in _our_processes(conf, exclude={os.getpid(), os.getppid()}):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
