"""A booted systemd for the package tests: a cached Debian root filesystem in systemd-nspawn.

PID 1 on the test machines is not systemd, so `systemctl`, timers and the journal are exercised
in a container instead (the recipe and its timings: docs/packaging.md, Tests):

- `rootfs(packages, suite=...)` builds a Debian minbase tree of `suite` (default bookworm; the
  tested suites are `suites()`: bookworm and trixie) with mmdebstrap, from the Debian mirror the
  host's apt already uses (`mirror_lines()`: /etc/apt/sources.list or deb822 *.sources, in
  /etc/apt/sources.list.d too; $LSYNC_TEST_MIRROR and $LSYNC_TEST_SECURITY_MIRROR override),
  cached under /var/cache/library-syncer-tests keyed on suite, mirror and package list (a rerun
  is instant; a fresh machine takes ~35-60 s per suite). The container has no network, so
  everything the .debs depend on must be in `packages` (`deb_depends()` reads them).
- `Container` boots it with `--volatile=overlay` (the cached tree stays pristine), waits for
  systemd, runs commands with nsenter, and powers it off.
- `build_debs()` builds the three packages from this tree (`released()`: a shipped release kept
  in tests/data/releases, for the upgrade test); `boot()` boots the one tree per suite every
  booted-systemd test shares (`package_rootfs()`: what the packages depend on, so one cache key
  per suite).
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
DEFAULT_SUITE = "bookworm"
# The Debian releases the packages are tested on (docs/packaging.md: the supported platforms).
# $LSYNC_TEST_SUITES ("bookworm trixie") picks a subset, or adds one to try.
TESTED_SUITES = ("bookworm", "trixie")
APT_DIR = Path("/etc/apt")
# The binary packages this tree builds (debian/control).
PACKAGES = ("library-syncer", "library-syncer-common", "library-syncer-server")
# The version the upgrade tests build this tree as (later than any real one).
NEXT_VERSION = "99.0.0+test"
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


def suites() -> list[str]:
    """The suites the booted-systemd tests run on: $LSYNC_TEST_SUITES, or TESTED_SUITES."""
    chosen = os.environ.get("LSYNC_TEST_SUITES", "").replace(",", " ").split()
    return chosen or list(TESTED_SUITES)


@dataclass(frozen=True)
class AptSource:
    """One `deb` entry of an apt configuration (one suite list, one URI)."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""


def parse_one_line(text: str) -> list[AptSource]:
    """`deb [options] URI SUITE COMPONENT...` lines (sources.list, *.list); deb-src ignored."""
    found = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        rest = line[4:].strip()
        options: dict[str, str] = {}
        if rest.startswith("["):
            closing = rest.index("]")
            for option in rest[1:closing].split():
                name, _, value = option.partition("=")
                options[name.lower()] = value
            rest = rest[closing + 1:].strip()
        fields = rest.split()
        if len(fields) < 2:
            continue
        found.append(AptSource(fields[0], (fields[1],), tuple(fields[2:]),
                               options.get("signed-by", "")))
    return found


def parse_deb822(text: str) -> list[AptSource]:
    """deb822 stanzas (*.sources): Types/URIs/Suites/Components/Signed-By, Enabled: no skipped."""
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        last = ""
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and last:  # continuation (an inline Signed-By key, say)
                fields[last] += "\n" + raw.strip()
                continue
            name, _, value = raw.partition(":")
            last = name.strip().lower()
            fields[last] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed_by = fields.get("signed-by", "")
        if "\n" in signed_by:  # an embedded key: mmdebstrap takes file names only
            signed_by = ""
        for uri in fields.get("uris", "").split():
            found.append(AptSource(uri, tuple(fields.get("suites", "").split()),
                                   tuple(fields.get("components", "").split()), signed_by))
    return found


def host_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """Every `deb` entry apt reads: sources.list, sources.list.d/*.list and *.sources (apt
    ignores other names, such as the *.disabled files some hosts keep)."""
    found = []
    one_line = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        one_line += sorted(parts.glob("*.list"))
        found += [s for p in sorted(parts.glob("*.sources")) for s in parse_deb822(p.read_text())]
    found = [s for p in one_line if p.is_file() for s in parse_one_line(p.read_text())] + found
    return found


def _path_parts(uri: str) -> list[str]:
    return [part for part in uri.split("://", 1)[-1].split("/")[1:] if part]


def debian_mirrors(sources: Iterable[AptSource]) -> tuple[AptSource | None, AptSource | None]:
    """The Debian main archive entry and the security archive entry among `sources`.

    The main archive is the first entry with component main whose URI path has a `debian`
    folder (deb.debian.org/debian, a country mirror, a proxy's …/debian, snapshot's
    archive/debian/DATE); the security one has a `debian-security` folder. Third-party
    repositories (nodesource, Google, …) have neither and are ignored."""
    archive = security = None
    for source in sources:
        if "main" not in source.components:
            continue
        parts = _path_parts(source.uri)
        if "debian-security" in parts and security is None:
            security = source
        elif ("debian" in parts and archive is None
              and not all(s.endswith("-security") for s in source.suites)):
            archive = source
    return archive, security


def mirror_lines(suite: str, apt_dir: Path = APT_DIR,
                 environ: dict[str, str] | None = None) -> list[str]:
    """The apt lines mmdebstrap builds `suite` from: SUITE and SUITE-updates from the host's
    Debian mirror, SUITE-security from its security mirror (when the host has one).

    $LSYNC_TEST_MIRROR replaces the main archive URI and $LSYNC_TEST_SECURITY_MIRROR the
    security one (empty: none). Fails, naming the variable, when neither the host nor the
    environment names a Debian mirror (an Ubuntu host, for one)."""
    env = os.environ if environ is None else environ
    archive, security = debian_mirrors(host_sources(apt_dir))
    archive_uri = env.get("LSYNC_TEST_MIRROR") or (archive.uri if archive else "")
    assert archive_uri, (
        f"no Debian main archive (a URI …/debian with component main) in {apt_dir}/sources.list "
        f"or {apt_dir}/sources.list.d/*.{{list,sources}}: set LSYNC_TEST_MIRROR, e.g. "
        "http://deb.debian.org/debian")
    if "LSYNC_TEST_SECURITY_MIRROR" in env:
        security_uri = env["LSYNC_TEST_SECURITY_MIRROR"]
    else:
        security_uri = security.uri if security else ""

    def line(source: AptSource | None, uri: str, suite_name: str) -> str:
        keyring = source.signed_by if source and source.uri == uri else ""
        options = f"[signed-by={keyring}] " if keyring else ""
        return f"deb {options}{uri} {suite_name} main"

    lines = [line(archive, archive_uri, suite)]
    if suite not in ("sid", "unstable", "experimental"):
        lines.append(line(archive, archive_uri, f"{suite}-updates"))
        if security_uri:
            lines.append(line(security, security_uri, f"{suite}-security"))
    return lines


def rootfs(packages: Iterable[str], suite: str = DEFAULT_SUITE,
           base: Iterable[str] = BASE_PACKAGES) -> Path:
    """The cached root filesystem of `suite` with `base` (BASE_PACKAGES: a bootable systemd) +
    packages; built once per suite, mirror and package set. A tree never booted (a daemon run
    as the container's only process) may pass base=()."""
    include = sorted(set(base) | set(packages))
    sources = mirror_lines(suite)
    key = hashlib.sha256(f"{suite} {' '.join(include)} {CUSTOMIZE} {sources}".encode()
                         ).hexdigest()[:16]
    CACHE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = CACHE_ROOT / f"rootfs-{suite}-{key}"
    with open(CACHE_ROOT / ".lock", "w") as lock:  # two test runs never build the same tree
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        argv = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(include),
                f"--customize-hook={CUSTOMIZE}", suite, str(partial), *sources]
        started = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, "mmdebstrap failed:\n" + result.stderr[-3000:]
        (partial / ".complete").write_text(
            " ".join(include) + "\n" + "\n".join(sources) + "\n"
            + f"built in {time.monotonic() - started:.0f} s\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def build_debs(out: Path, *options: str) -> list[Path]:
    """The three packages built from this tree into `out` (packaging/build-deb `options`)."""
    result = subprocess.run([str(TOP / "packaging" / "build-deb"), *options, str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"build-deb failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    found = sorted(out.glob("*.deb"))
    names = sorted(p.name.split("_")[0] for p in found)
    assert names == sorted(PACKAGES), names
    return found


RELEASES = TOP / "tests" / "data" / "releases"


def released(version: str) -> list[Path]:
    """The packages of a released version as they were shipped, kept in the repository
    (tests/data/releases/<version>/: built by that release's own packaging/build-deb), so an
    upgrade test needs no history of the clone and no rebuild of old code."""
    found = sorted((RELEASES / version).glob("*.deb"))
    versions = {subprocess.run(["dpkg-deb", "-f", str(p), "Version"], check=True,
                               capture_output=True, text=True).stdout.strip() for p in found}
    assert found and versions == {version}, (f"no packages of {version} in "
                                             f"{RELEASES / version}", found, versions)
    return found


def named(debs: Iterable[Path], *names: str) -> list[Path]:
    """The .debs of the named packages (library-syncer-common, …): exactly one for each name."""
    chosen = [p for p in debs if p.name.split("_")[0] in names]
    assert sorted(p.name.split("_")[0] for p in chosen) == sorted(names), (names, debs)
    return chosen


def package_rootfs(debs: Iterable[Path], suite: str = DEFAULT_SUITE) -> Path:
    """The tree every booted-systemd test uses: what the packages depend on. One package set for
    all of them, so one cached tree per suite (one mmdebstrap on a fresh machine) serves every
    test file."""
    return rootfs(deb_depends(debs, exclude=PACKAGES), suite)


@contextlib.contextmanager
def boot(debs: Iterable[Path], log_dir: Path, binds_ro: Sequence[tuple[Path, str]] = (),
         suite: str = DEFAULT_SUITE) -> Iterator[Container]:
    """A booted container on package_rootfs(debs, suite), console log in `log_dir`; powered off
    after."""
    require_tools()
    with Container(package_rootfs(debs, suite), binds_ro=binds_ro,
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
        HOST_LOCK.acquire()
        argv = ["timeout", str(NSPAWN_LIFETIME), "systemd-nspawn", "-q", "-D", str(self.root),
                "-b", "--register=no", "--keep-unit", "--volatile=overlay",
                "--private-network", f"--machine={self.machine}", "--console=read-only"]
        argv += [f"--bind-ro={host}:{guest}" for host, guest in self.binds_ro]
        env = nspawn_env()
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
        remove_leftover_cgroups()
        HOST_LOCK.release()


def nspawn_env() -> dict[str, str]:
    """The environment for systemd-nspawn here: the host's PID 1 is not systemd, so nspawn is
    told to give the payload the unified cgroup hierarchy (it cannot set up the legacy one)."""
    return dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")


class _HostLock:
    """Containers of concurrent test runs on one host must not overlap: nspawn (without systemd
    as the host's PID 1) names its cgroups payload/ and supervisor/, and one run's tidy-up
    (remove_leftover_cgroups) would pull them from under another run's starting container.
    Held while any container of this process lives (re-entrant within the process)."""

    def __init__(self) -> None:
        self.depth = 0
        self.handle = None

    def acquire(self) -> None:
        if self.depth == 0:
            CACHE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
            self.handle = open(CACHE_ROOT / ".lock-containers", "w")  # noqa: SIM115
            fcntl.flock(self.handle, fcntl.LOCK_EX)
        self.depth += 1

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.handle is not None:
            self.handle.close()  # releases the flock
            self.handle = None


HOST_LOCK = _HostLock()


@contextlib.contextmanager
def containers_exclusive() -> Iterator[None]:
    HOST_LOCK.acquire()
    try:
        yield
    finally:
        HOST_LOCK.release()


def remove_leftover_cgroups() -> None:
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
