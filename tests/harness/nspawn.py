"""A booted systemd for the package tests: a cached Debian root filesystem in systemd-nspawn.

PID 1 on the test machines is not systemd, so `systemctl`, timers and the journal are exercised
in a container instead (measured recipe: ../shared/systemd-boot.md):

- `rootfs(packages)` builds a bookworm minbase tree with mmdebstrap from the host's own apt
  sources, cached under /var/cache/library-syncer-tests keyed on the package list (a rerun is
  instant; a fresh machine takes ~35 s). The container has no network, so everything the .debs
  depend on must be in `packages` (`deb_depends()` reads them).
- `Container` boots it with `--volatile=overlay` (the cached tree stays pristine), waits for
  systemd, runs commands with nsenter, and powers it off.
- `build_debs()` builds the two packages from this tree; `boot()` boots the one tree every
  booted-systemd test shares (`package_rootfs()`: what the packages depend on, so one cache key).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
CACHE_ROOT = Path(os.environ.get("LSYNC_NSPAWN_CACHE", "/var/cache/library-syncer-tests"))
SUITE = "bookworm"
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "tzdata", "curl", "procps")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 60.0
NSPAWN_LIFETIME = 1800  # `timeout` backstop: a wedged container never outlives the suite
# A real install has an /etc/hosts naming localhost (Caddy resolves it, for one); mmdebstrap
# writes none. Part of the cache key: changing the recipe rebuilds the tree.
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
CUSTOMIZE = f"printf '{HOSTS}' > \"$1/etc/hosts\""


def require_tools() -> None:
    missing = [t for t in ("mmdebstrap", "systemd-nspawn", "nsenter", "dpkg-deb")
               if shutil.which(t) is None]
    assert not missing, f"missing {missing}: run tests/bootstrap (mmdebstrap, systemd-container)"
    assert os.geteuid() == 0, "the booted-systemd test needs root (systemd-nspawn)"


def deb_depends(debs: Iterable[Path], exclude: Iterable[str] = ()) -> list[str]:
    """Package names the .debs depend on (first alternative, versions dropped)."""
    skip = set(exclude)
    names: set[str] = set()
    for deb in debs:
        depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], check=True,
                                 capture_output=True, text=True).stdout
        for clause in depends.split(","):
            first = clause.split("|")[0].strip()
            name = re.split(r"[\s(:]", first, maxsplit=1)[0]
            if name and name not in skip:
                names.add(name)
    return sorted(names)


def rootfs(packages: Iterable[str]) -> Path:
    """The cached root filesystem with BASE_PACKAGES + packages; built once per package set."""
    include = sorted(set(BASE_PACKAGES) | set(packages))
    key = hashlib.sha256(f"{SUITE} {' '.join(include)} {CUSTOMIZE}".encode()).hexdigest()[:16]
    CACHE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = CACHE_ROOT / f"rootfs-{SUITE}-{key}"
    with open(CACHE_ROOT / ".lock", "w") as lock:  # two test runs never build the same tree
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        argv = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(include),
                f"--customize-hook={CUSTOMIZE}", SUITE, str(partial), str(APT_SOURCES)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, "mmdebstrap failed:\n" + result.stderr[-3000:]
        (partial / ".complete").write_text(" ".join(include) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def build_debs(out: Path, *options: str) -> list[Path]:
    """Both packages built from this tree into `out` (packaging/build-deb `options`)."""
    result = subprocess.run([str(TOP / "packaging" / "build-deb"), *options, str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"build-deb failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    found = sorted(out.glob("*.deb"))
    names = sorted(p.name.split("_")[0] for p in found)
    assert names == ["library-syncer", "library-syncer-server"], names
    return found


def package_rootfs(debs: Iterable[Path]) -> Path:
    """The tree every booted-systemd test uses: what the packages depend on. One package set for
    all of them, so one cached tree (one mmdebstrap on a fresh machine) serves every test file."""
    return rootfs(deb_depends(debs, exclude={"library-syncer"}))


@contextlib.contextmanager
def boot(debs: Iterable[Path], log_dir: Path,
         binds_ro: Sequence[tuple[Path, str]] = ()) -> Iterator[Container]:
    """A booted container on package_rootfs(debs), console log in `log_dir`; powered off after."""
    require_tools()
    with Container(package_rootfs(debs), binds_ro=binds_ro,
                   log_file=log_dir / "console.log") as container:
        yield container


def install(container: Container, debs: Iterable[Path], folder: str = "/srv/in") -> None:
    """apt-get install the .debs, bind-mounted at `folder` in the container (offline)."""
    container.run("apt-get", "install", "-y", *(f"{folder}/{p.name}" for p in debs),
                  timeout=600)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces, so split after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def _descendant_named(pid: int, name: str) -> int | None:
    queue = [pid]
    while queue:
        current = queue.pop()
        for kid in _children(current):
            try:
                comm = Path(f"/proc/{kid}/comm").read_text().strip()
            except OSError:
                continue
            if comm == name:
                return kid
            queue.append(kid)
    return None


@dataclass
class Container:
    """A booted systemd in systemd-nspawn. Use as a context manager or call start()/stop()."""

    root: Path
    binds_ro: Sequence[tuple[Path, str]] = ()
    log_file: Path | None = None
    machine: str = field(default_factory=lambda: f"lsync-{uuid.uuid4().hex[:8]}")
    process: subprocess.Popen | None = field(default=None, repr=False)
    pid1: int = 0

    def __enter__(self) -> Container:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        argv = ["timeout", str(NSPAWN_LIFETIME), "systemd-nspawn", "-q", "-D", str(self.root),
                "-b", "--register=no", "--keep-unit", "--volatile=overlay",
                "--private-network", f"--machine={self.machine}", "--console=read-only"]
        argv += [f"--bind-ro={host}:{guest}" for host, guest in self.binds_ro]
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        out = open(self.log_file, "wb") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"systemd-nspawn exited: {self._log_tail()}"
            pid = _descendant_named(self.process.pid, "systemd")
            if pid and Path(f"/proc/{pid}/root/run/systemd/private").exists():
                self.pid1 = pid
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise AssertionError(f"container did not boot in {BOOT_TIMEOUT} s: "
                                 f"{self._log_tail()}")
        # Wait for the boot to settle (running, or degraded if some unit of the image failed).
        self.run("systemctl", "is-system-running", "--wait", check=False, timeout=BOOT_TIMEOUT)

    def _log_tail(self) -> str:
        if self.log_file and self.log_file.exists():
            return self.log_file.read_text(errors="replace")[-2000:]
        return "(no log)"

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """Run argv inside the container (as root, clean environment); output captured."""
        assert self.pid1, "container not started"
        full = ["nsenter", "-t", str(self.pid1), "-a", "--", "env", "-i", f"PATH={PATH}",
                "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0", "COLUMNS=200", *argv]
        result = subprocess.run(full, input=input, capture_output=True, text=True,
                                timeout=timeout)
        if check:
            assert result.returncode == 0, (
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                f"{result.stderr[-3000:]}")
        return result

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> str:
        """Run a shell script inside; return its stdout."""
        return self.run("sh", "-ec", script, check=check, timeout=timeout).stdout

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        self.run("sh", "-ec", f'mkdir -p "$(dirname "{path}")"; cat > "{path}"; '
                 f'chmod {mode} "{path}"', input=text)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None and self.pid1:
            self.run("systemctl", "poweroff", check=False, timeout=30)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
        self.pid1 = 0
        _remove_leftover_cgroups()


def _remove_leftover_cgroups() -> None:
    """nspawn leaves empty payload/ and supervisor/ cgroups behind (harmless; tidy them)."""
    for hierarchy in ("unified", "systemd"):
        base = Path("/sys/fs/cgroup") / hierarchy
        for name in ("payload", "supervisor"):
            with contextlib.suppress(OSError):
                (base / name).rmdir()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
