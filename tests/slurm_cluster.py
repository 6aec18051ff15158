"""A real one-node SLURM cluster for the tests: Debian's munge, slurmctld and slurmd, run in the
foreground from a temp folder on free ports, so they never touch a system SLURM and are stopped by
the PIDs this module started."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.helpers import free_port

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


SEARCH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"


def missing() -> list[str]:
    return [b for b in BINARIES if not shutil.which(b, path=SEARCH)]


def install() -> str | None:
    """Install the Debian packages if a binary is missing. Returns why it can't, or None when done."""
    if not missing():
        return None
    if not shutil.which("apt-get"):
        return f"SLURM binaries {missing()} missing and apt-get unavailable (install {' '.join(PACKAGES)})"
    if os.geteuid() != 0:
        return f"SLURM binaries {missing()} missing; installing {' '.join(PACKAGES)} needs root"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return None


def _mem_mb() -> int:
    kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal:"))
    return kb // 1024


CONF = """\
ClusterName=sslstudytest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={root}/munge.socket,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# no cgroups here: memory limits are enforced by polling the job's RSS every second
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
SchedulerParameters=sched_interval=1
MinJobAge=3600
KillWait=5
ReturnToService=2
# GPUs as generic resources bound to device files that are no GPUs (gres.conf: /dev/null, /dev/zero;
# Debian's Slurm 22.05 counts a gpu line without File as 0 GPUs and drains the node): SLURM
# schedules --gpus-per-node jobs on them, and nothing on the node is a GPU
GresTypes=gpu
NodeName={host} CPUs={cpus} RealMemory={mem} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


FAKE_GPUS = ("/dev/null", "/dev/zero")  # the device files of the test cluster's GPUs (see CONF)


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.cpus = os.cpu_count() or 1
        self.mem_mb = min(8000, _mem_mb() // 2)
        self.gpus = len(FAKE_GPUS)  # generic resources only (see CONF)

    @property
    def env(self) -> dict:
        return {"SLURM_CONF": str(self.conf)}

    def start(self) -> "LocalSlurm":
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(
            CONF.format(
                host=host,
                root=self.root,
                cpus=self.cpus,
                mem=self.mem_mb,
                gpus=self.gpus,
                ctld_port=free_port(),
                slurmd_port=free_port(),
            )
        )
        (self.root / "gres.conf").write_text(
            "".join(f"NodeName={host} Name=gpu File={f}\n" for f in FAKE_GPUS[: self.gpus])
        )
        env = dict(os.environ, SLURM_CONF=str(self.conf))
        r = self.root
        self._spawn(
            [
                "munged",
                "-F",
                "-f",
                f"--socket={r}/munge.socket",
                f"--key-file={key}",
                f"--pid-file={r}/munged.pid",
                f"--log-file={r}/log/munged.log",
                f"--seed-file={r}/munged.seed",
            ],
            env,
        )
        self._wait(lambda: (r / "munge.socket").exists(), "munged socket")
        self._spawn(["slurmctld", "-D", "-f", str(self.conf)], env)
        self._wait(lambda: self.run(["scontrol", "ping"]).returncode == 0, "slurmctld")
        self._spawn(["slurmd", "-D", "-f", str(self.conf)], env)
        self._wait(lambda: self.run(["sinfo", "-h", "-o", "%T"]).stdout.strip() == "idle", "the node to be idle")
        return self

    def _spawn(self, cmd: list[str], env: dict) -> None:
        log = open(self.root / "log" / f"{cmd[0]}.out", "w")
        cmd = [shutil.which(cmd[0], path=SEARCH), *cmd[1:]]  # daemons live in /usr/sbin
        self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _wait(self, ok, what: str, timeout: float = 60) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited while starting SLURM; logs in {self.root / 'log'}")
            if ok():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}; logs in {self.root / 'log'}")

    def run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **self.env), timeout=60, **kw)

    def jobs(self) -> list[dict]:
        """squeue: every job of the cluster, with its name, state and restart count."""
        out = self.run(["squeue", "-h", "-o", "%i|%j|%T"]).stdout
        return [dict(zip(("id", "name", "state"), ln.split("|"))) for ln in out.splitlines() if ln.strip()]

    def job(self, job_id: str) -> dict:
        """scontrol's fields of one job (JobState, Restarts, Reason, ExitCode, ...)."""
        out = self.run(["scontrol", "show", "job", "-o", str(job_id)]).stdout
        return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)

    def stop(self) -> None:
        """Cancel what is left, then stop the daemons this object started (by PID), newest first."""
        if self.procs and self.procs[-1].poll() is None:
            self.run(["scancel", "--full", "--user", str(os.getuid())])
            t0 = time.time()
            while self.jobs() and time.time() - t0 < 30:
                time.sleep(0.5)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
