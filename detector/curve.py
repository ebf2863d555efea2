"""CURVE access control: the daemon's publisher and catch-up speak only to allowed clients.

Keys are ZeroMQ certificates as pyzmq's `zmq.auth` writes them (`whale-listen keygen`):
NAME.key holds a public key (given out), NAME.key_secret the public and the secret key (kept,
0600). The daemon has a secret certificate (`--curve-secret`) and a folder of the client public
keys it lets in (`--curve-allow`, read once at start); every connection is encrypted and a
client whose key is not in the folder, or that speaks plaintext, gets nothing: its handshake is
refused before it can subscribe or ask. A client needs its own secret certificate and the
daemon's public key (`subscribe --curve-secret FILE --server-key FILE`).
"""

import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
import zmq.auth
import zmq.utils.z85

from detector.errors import ConfigError, UsageError
from detector.journal import escape

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

ZAP_DOMAIN = "whale-listen"
# ZMQ_MAXMSGSIZE also bounds the handshake: CURVE's INITIATE command (~260 bytes plus the socket
# metadata) is over the 256-byte cap on plaintext requests and subscriptions, and was refused.
HANDSHAKE_BYTES = 1024


def inbound_limit(limit: int, curve: "ServerKeys | None") -> int:
    """The ZMQ_MAXMSGSIZE for a server socket that takes messages of `limit` bytes at most."""
    return limit if curve is None else max(limit, HANDSHAKE_BYTES)


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _load(path: Path, what: str) -> tuple[bytes, bytes | None]:
    shown = escape(str(path))
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "cannot read it"
        raise ConfigError(
            f"{what} {shown}: {reason if path.exists() else 'no such file'}"
        ) from None
    except ValueError:
        raise ConfigError(
            f"{what} {shown}: not a ZeroMQ certificate (whale-listen keygen)"
        ) from None
    for key in (public, secret):
        if key is not None and not _is_key(key):
            raise ConfigError(f"{what} {shown}: not a valid CURVE key (whale-listen keygen)")
    return public, secret


def _is_key(key: bytes) -> bool:
    """A CURVE key as a certificate holds it: 40 Z85 characters (32 bytes)."""
    try:
        return len(key) == 40 and len(zmq.utils.z85.decode(key)) == 32
    except (ValueError, KeyError, struct.error):
        return False


def load_secret(path: Path, what: str = "CURVE secret certificate") -> tuple[bytes, bytes]:
    """(public, secret) from a NAME.key_secret file; ConfigError if it is not one."""
    public, secret = _load(Path(path), what)
    if secret is None:
        shown = escape(str(path))
        raise ConfigError(f"{what} {shown}: holds no secret key (give NAME.key_secret)")
    return public, secret


def load_public(path: Path, what: str = "CURVE public key") -> bytes:
    return _load(Path(path), what)[0]


def load_allowed(folder: Path) -> set[bytes]:
    """The public keys of every *.key file in the folder; ConfigError for a bad one or none."""
    shown = escape(str(folder))
    if not Path(folder).is_dir():
        raise ConfigError(f"--curve-allow {shown}: not a folder")
    try:
        files = sorted(Path(folder).glob("*.key"))
    except OSError as e:
        raise ConfigError(f"--curve-allow {shown}: {e.strerror}") from None
    keys = {load_public(file, "allowed client key") for file in files}
    if not keys:
        raise ConfigError(f"--curve-allow {shown}: no client public key (NAME.key) in it")
    return keys


class _AllowList:
    """The authenticator's credentials provider: the keys read at start, and nothing else."""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


@dataclass(frozen=True)
class ServerKeys:
    """The daemon's certificate and the client keys it allows (`--curve-secret/--curve-allow`)."""

    public: bytes
    secret: bytes
    allowed: frozenset[bytes]

    def authenticate(self, context: zmq.Context) -> "ThreadAuthenticator":
        """Start the context's ZAP handler (one per context), before any socket binds: without
        one, libzmq lets every CURVE client in."""
        from zmq.auth.thread import ThreadAuthenticator  # asyncio: only when used

        authenticator = ThreadAuthenticator(context)
        authenticator.start()
        authenticator.configure_curve_callback(
            ZAP_DOMAIN, credentials_provider=_AllowList(self.allowed)
        )
        return authenticator

    def apply(self, socket: zmq.Socket) -> None:
        """Make a socket a CURVE server (before it binds)."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True
        socket.zap_domain = ZAP_DOMAIN.encode()


def server_keys(secret_file: Path | None, allow_folder: Path | None) -> ServerKeys | None:
    """The daemon's settings as ServerKeys, None when both are off; one without the other is
    an error (encryption that lets anyone in, or an allow-list with no key to check it)."""
    if secret_file is None and allow_folder is None:
        return None
    if secret_file is None or allow_folder is None:
        given, missing = (
            ("--curve-allow", "--curve-secret")
            if secret_file is None
            else ("--curve-secret", "--curve-allow")
        )
        raise ConfigError(f"{given} needs {missing} too")
    public, secret = load_secret(secret_file)
    return ServerKeys(public, secret, frozenset(load_allowed(allow_folder)))


@dataclass(frozen=True)
class ClientKeys:
    """A subscriber's certificate and the daemon's public key (`--curve-secret/--server-key`)."""

    public: bytes
    secret: bytes
    server: bytes

    def apply(self, socket: zmq.Socket) -> None:
        """Make a socket a CURVE client of the daemon (before it connects)."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_serverkey = self.server


def client_keys(secret_file: Path | None, server_key: Path | None) -> ClientKeys | None:
    if secret_file is None and server_key is None:
        return None
    if secret_file is None or server_key is None:
        raise UsageError("--curve-secret and --server-key go together")
    public, secret = load_secret(secret_file)
    return ClientKeys(public, secret, load_public(server_key, "server public key"))


def keygen(folder: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public, 0644) and NAME.key_secret (0600 from its creation) in folder;
    never over an existing key (a daemon's secret, once replaced, is gone)."""
    if not NAME.fullmatch(name):
        raise UsageError(
            f"key name {ascii(name)}: letters, digits, '.', '_' or '-', at most 64, "
            "not starting with '.'"
        )
    folder = Path(folder)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if os.path.lexists(path):
            raise UsageError(f"{escape(str(path))} exists: not overwriting a key")
    old = os.umask(0o077)  # the secret is never readable by others, not even for a moment
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        zmq.auth.create_certificates(folder, name)
    except OSError as e:
        raise ConfigError(f"cannot write keys in {escape(str(folder))}: {e.strerror}") from None
    finally:
        os.umask(old)
    public.chmod(0o644)  # given out
    if stat.S_IMODE(secret.stat().st_mode) != 0o600:
        secret.chmod(0o600)
    return public, secret
