import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from detector.settings import OPTIONS

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNIT = DEPLOY / "whale-listen.service"
INSTALL = DEPLOY / "install.sh"
EXAMPLE = DEPLOY / "config.example.toml"

CONFIG_KEYS = {option.name: option.toml for option in OPTIONS}  # the one declaration


# ---- systemd unit ----------------------------------------------------------------------------


def _unit_settings() -> dict[str, str]:
    settings = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # verify insists that ExecStart exists; the real one appears only once the package is installed
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/whale-listen --config /etc/whale-listen/config.toml\n" in text
    copy = tmp_path / "whale-listen.service"
    copy.write_text(text.replace("/usr/local/bin/whale-listen", shutil.which("true")))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # unknown keys and bad values are only warnings: any output at all is a failure
    assert result.stdout + result.stderr == ""


def test_unit_settings():
    settings = _unit_settings()
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "User": "whale-listen",
        "SupplementaryGroups": "audio",
        "StateDirectory": "whale-listen",
        "DevicePolicy": "closed",
        "DeviceAllow": "char-alsa rw",
        "ProtectSystem": "strict",
        "CapabilityBoundingSet": "",
        "MemoryMax": "300M",
    }
    assert {key: settings.get(key) for key in expected} == expected
    # sounddevice's PortAudio callback is a cffi ffi.callback, which needs W+X memory
    assert settings["MemoryDenyWriteExecute"] == "no"


# ---- config example --------------------------------------------------------------------------


def _documented_keys() -> list[tuple[str, bool, int]]:
    """(key, set?, line index) for each `key = ...` or `# key = ...` line."""
    found = []
    for index, line in enumerate(EXAMPLE.read_text().splitlines()):
        match = re.match(r"^(# )?([a-z_]+) = ", line)
        if match:
            found.append((match.group(2), match.group(1) is None, index))
    return found


def test_config_example_documents_every_key_once_with_a_comment():
    lines = EXAMPLE.read_text().splitlines()
    documented = _documented_keys()
    assert sorted(key for key, _, _ in documented) == sorted(CONFIG_KEYS)
    for key, is_set, index in documented:
        above = lines[index - 1]
        assert above.startswith("# ") and not re.match(r"^# [a-z_]+ = ", above), key
        if not is_set:
            value = tomllib.loads(lines[index][2:])[key]  # a commented key is still valid TOML
            assert isinstance(value, CONFIG_KEYS[key]), key


def test_config_example_is_the_service_config():
    config = tomllib.loads(EXAMPLE.read_text())
    for key, value in config.items():
        assert isinstance(value, CONFIG_KEYS[key]), key
    assert config["device"] == "hw:1"
    assert "replay" not in config
    assert config["events_log"].startswith("/var/lib/whale-listen/")
    assert config["clips"].startswith("/var/lib/whale-listen/")
    assert config["publish"] == ["tcp://127.0.0.1:5556"]
    assert config["heartbeat"] == 10.0 and config["retry_max"] == 30.0


# ---- installer -------------------------------------------------------------------------------


def _install(root: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["sh", str(INSTALL), "--root", str(root), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result


def _snapshot(root: Path) -> dict[str, tuple]:
    return {
        str(path.relative_to(root)): (
            stat.S_IMODE(path.lstat().st_mode),
            path.lstat().st_mtime_ns,
            path.read_bytes() if path.is_file() else None,
        )
        for path in sorted(root.rglob("*"))
    }


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_into_a_root_twice(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    _install(root)
    unit = root / "etc/systemd/system/whale-listen.service"
    config = root / "etc/whale-listen/config.toml"
    state = root / "var/lib/whale-listen"
    assert unit.read_bytes() == UNIT.read_bytes() and _mode(unit) == 0o644
    assert config.read_bytes() == EXAMPLE.read_bytes() and _mode(config) == 0o644
    assert state.is_dir() and _mode(state) == 0o750
    passwd = (root / "etc/passwd").read_text().splitlines()
    group = (root / "etc/group").read_text().splitlines()
    (user,) = [line for line in passwd if line.startswith("whale-listen:")]
    name, _, uid, gid, _, home, shell = user.split(":")
    assert home == "/var/lib/whale-listen" and shell == "/usr/sbin/nologin"
    assert 100 <= int(uid) <= 999
    assert f"whale-listen:x:{gid}:" in group
    (audio,) = [line for line in group if line.startswith("audio:")]
    assert audio.split(":")[3].split(",") == ["whale-listen"]

    before = _snapshot(root)
    second = _install(root)
    assert _snapshot(root) == before
    assert "installed" not in second.stdout and "added" not in second.stdout


def test_install_keeps_an_edited_config_and_existing_accounts(tmp_path):
    root = tmp_path / "root"
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\nsvc:x:999:999::/:/bin/false\n")
    (etc / "group").write_text("root:x:0:\naudio:x:29:pulse\nsvc:x:999:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    config = etc / "whale-listen/config.toml"
    config.parent.mkdir()
    config.write_text('device = "hw:2"\n')

    _install(root)
    _install(root)
    assert config.read_text() == 'device = "hw:2"\n'
    assert (etc / "whale-listen/config.toml.new").read_bytes() == EXAMPLE.read_bytes()
    passwd = (etc / "passwd").read_text().splitlines()
    group = (etc / "group").read_text().splitlines()
    assert passwd[:2] == ["root:x:0:0:root:/root:/bin/bash", "svc:x:999:999::/:/bin/false"]
    (user,) = [line for line in passwd if line.startswith("whale-listen:")]
    assert user.split(":")[2] == "998"  # 999 is taken
    assert "audio:x:29:pulse,whale-listen" in group
    assert sum(line.startswith("whale-listen:") for line in group) == 1
    shadow = (etc / "shadow").read_text().splitlines()
    assert sum(line.startswith("whale-listen:") for line in shadow) == 1


def test_install_refuses_python_with_root(tmp_path):
    """pip --root would write scripts that run the host's interpreter, absent from the root."""
    root = tmp_path / "root"
    root.mkdir()
    result = subprocess.run(
        ["sh", str(INSTALL), "--root", str(root), "--python", "/usr/bin/python3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"install.sh: --python /usr/bin/python3 with --root: its scripts would run "
        f"/usr/bin/python3, which is not in {root}; use --venv"
    ]
    assert not any(root.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--venv", "opt/whale-listen"], "give an absolute path"),
        (["--venv", "/opt/whale-listen"], "has no /usr/bin/python3."),  # root without python
    ],
)
def test_install_venv_refusals_are_one_line(tmp_path, args, message):
    root = tmp_path / "root"
    root.mkdir()
    result = subprocess.run(
        ["sh", str(INSTALL), "--root", str(root), *args], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
    assert not any(root.iterdir())


VENV_PYTHON = Path("/usr/bin/python3")


def _python_version(python: Path) -> str:
    return subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.mark.skipif(not VENV_PYTHON.exists(), reason="no /usr/bin/python3 (not Debian-like)")
def test_install_venv_into_a_root_runs_inside_it(tmp_path):
    """--root DIR --venv /opt/whale-listen: the root's own paths, nothing naming DIR, and the
    venv runs when DIR/opt is mounted at /opt (in a private mount namespace)."""
    if subprocess.run([str(VENV_PYTHON), "-m", "venv", "--help"], capture_output=True).returncode:
        pytest.skip("/usr/bin/python3 has no venv module (apt-get install python3-venv)")
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / f"usr/bin/python{_python_version(VENV_PYTHON)}").touch()  # the image's python
    env = {**os.environ, "PIP_NO_DEPS": "1"}  # the package alone: the deps are pip's business

    def install() -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["sh", str(INSTALL), "--root", str(root), "--venv", "/opt/whale-listen"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        return result

    first = install()
    assert f"created venv {root}/opt/whale-listen" in first.stdout
    venv = root / "opt/whale-listen"
    link = root / "usr/local/bin/whale-listen"
    assert os.readlink(link) == "/opt/whale-listen/bin/whale-listen"
    assert (venv / "bin/whale-listen").read_text().startswith("#!/opt/whale-listen/bin/python\n")
    assert os.readlink(venv / "bin/python3") == str(VENV_PYTHON)
    for path in [venv / "pyvenv.cfg", *(venv / "bin").iterdir()]:
        if path.is_file() and not path.is_symlink():
            assert str(root) not in path.read_text(errors="replace"), path
    second = install()
    assert "unchanged venv" in second.stdout and "unchanged " + str(link) in second.stdout

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("running the root's venv needs root and unshare (a mount namespace)")
    code = "import sys, detector; print(sys.prefix, detector.__file__, detector.__version__)"
    script = f"mount --bind {root}/opt /opt && /opt/whale-listen/bin/python -c '{code}'"
    ran = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    if ran.returncode and "unshare" in ran.stderr:
        pytest.skip(f"no mount namespace here: {ran.stderr.strip()}")
    from detector import __version__

    assert ran.returncode == 0, ran.stderr
    prefix, module, version = ran.stdout.split()
    assert prefix == "/opt/whale-listen" and version == __version__
    assert module.startswith("/opt/whale-listen/lib/python")


def test_install_rejects_unknown_options(tmp_path):
    result = subprocess.run(["sh", str(INSTALL), "--bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr
    assert not any(tmp_path.iterdir())


def _offline_security_problem() -> str | None:
    """Why `systemd-analyze security --offline=yes` cannot score the unit here, or None."""
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze not installed"
    probe = subprocess.run(
        ["systemd-analyze", "security", "--help"], capture_output=True, text=True, timeout=60
    )
    if "--offline" not in probe.stdout:
        return "this systemd-analyze has no --offline (systemd 250 or later has)"
    return None


def test_unit_exposure_is_at_most_2(tmp_path):
    """Issue 14: 4.1 before (no SystemCallFilter, ProtectClock, ProtectKernelLogs, ...)."""
    problem = _offline_security_problem()
    if problem:
        pytest.skip(problem)
    copy = tmp_path / "whale-listen.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/whale-listen", shutil.which("true")))
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_keeps_what_audio_and_sockets_need_and_stops_on_bad_config():
    settings = _unit_settings()
    assert set(settings["RestartPreventExitStatus"].split()) == {"64", "78"}
    assert settings["UMask"] == "0027"
    assert settings["SupplementaryGroups"] == "audio" and settings["DeviceAllow"] == "char-alsa rw"
    assert settings.get("PrivateDevices") == "no" and "PrivateUsers" not in settings
    assert "PrivateNetwork" not in settings and "IPAddressDeny" not in settings
    assert settings["MemoryDenyWriteExecute"] == "no"
