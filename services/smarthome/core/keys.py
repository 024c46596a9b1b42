"""CurveZMQ keys: one keypair per service and one for the host tools; the public keys are the allow-list.

Keys live in one directory ($SMARTHOME_KEYS; in compose a volume every container mounts read-only, filled by
the one-shot `keys` service; on the host ./keys): NAME.key holds a public key, NAME.key_secret the pair,
both in zmq.auth's certificate format, and WEB.token the dashboard's access token. `smarthome keys` creates the
missing ones; the secret files are never in the image, never in an env var, never committed.

Who may say what (the Policy) follows from the config: a service may publish only its own topics, the
broker relays what it has checked, and the host tools (the operator) may say anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.base import Authenticator

from smarthome.core.config import BrokerConfig, Config, Publish, SetupError, WebConfig
from smarthome.core.identity import TOOLS, Identity

KEYS_ENV = "SMARTHOME_KEYS"
TOKEN_FILE_ENV = "SMARTHOME_TOKEN_FILE"  # a file with the dashboard's token, apart from the keys (a swarm secret)
TOKEN_BYTES = 32  # a dashboard token's randomness: 43 URL-safe characters
SECRET_KEY_ENV = "SMARTHOME_SECRET_KEY"  # a file with this service's own pair (a swarm secret); then the
# folder holds the public keys only
ZAP_DOMAIN = "smarthome"


class KeysError(SetupError):
    """CurveZMQ keys that cannot be read or written: DIRECTORY: PROBLEM."""

    kind = "keys error"


def keys_dir(config: Config) -> Path:
    """$SMARTHOME_KEYS, or keys/ beside the config's folder (the project's keys/ for the shipped configs)."""
    return Path(os.environ.get(KEYS_ENV) or Path(config.path).resolve().parent.parent / "keys")


class KeyRing:
    """The keys in one directory: our own pair, everyone's public key, and whose key a public key is."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._names: dict[bytes, str] = {}  # z85 public key -> name

    def ensure(self, names: Iterable[str], owner: int | None = None) -> list[str]:
        """Create the keypairs that are missing (under a lock: services starting together agree); the new names."""
        self.directory.mkdir(parents=True, exist_ok=True)
        created = []
        with open(self.directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for name in names:
                if not (self.directory / f"{name}.key_secret").exists():
                    _, secret = zmq.auth.create_certificates(self.directory, name)
                    os.chmod(secret, 0o600)
                    created.append(name)
                if owner is not None:  # compose: the services' user reads them, the host's user owns the tools'
                    os.chown(self.directory / f"{name}.key_secret", owner if name != TOOLS else self.host_owner(), -1)
        return created

    def host_owner(self) -> int:
        return self.directory.stat().st_uid

    def ensure_token(self, name: str, owner: int | None = None, suffix: str = ".token") -> bool:
        """Make `name`'s dashboard token (or MQTT password: `suffix`) if it is missing (under the lock); whether it
        was made. The service's user (`owner`) reads it, and so does the host's (the folder's group):
        `smarthome dashboard` prints it, and Home Assistant's MQTT user is given its password."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.token_path(name, suffix)
        with open(self.directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            made = not path.exists()
            if made:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as file:
                    file.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
            if owner is not None:  # ours for a moment: chmod wants the owner (compose's `keys` has CHOWN, not FOWNER)
                os.chown(path, os.geteuid(), -1)
                os.chmod(path, 0o640)
                os.chown(path, owner, self.directory.stat().st_gid)
        return made

    def token_path(self, name: str, suffix: str = ".token") -> Path:
        return self.directory / f"{name}{suffix}"

    def token(self, name: str, suffix: str = ".token") -> bytes:
        """`name`'s dashboard token, or MQTT password (OSError if it cannot be read)."""
        return self.token_path(name, suffix).read_text(encoding="ascii").strip().encode()

    def pair(self, name: str) -> tuple[bytes, bytes]:
        """(public, secret) of `name`, z85-encoded."""
        return _pair(self.directory / f"{name}.key_secret")

    def public(self, name: str) -> bytes:
        return _certificate(self.directory / f"{name}.key")[0]

    def name_of(self, public: bytes) -> str | None:
        """Whose key `public` (z85) is, or None: re-reads the directory for a key it does not know yet."""
        if public not in self._names:
            self._names = {}
            for path in self.directory.glob("*.key"):
                with contextlib.suppress(OSError):  # a key being written, or no key: nobody's, for now
                    self._names[self.public(path.stem)] = path.stem
        return self._names.get(public)


def key_names(config: Config) -> list[str]:
    return [*config.services, TOOLS]


def token_file(config: Config, name: str) -> Path:
    """Where web service `name`'s dashboard token is: its `access_token_file`, else $SMARTHOME_TOKEN_FILE (a swarm
    secret), else NAME.token beside the keys."""
    spec = config.services[name]
    chosen = (spec.access_token_file if isinstance(spec, WebConfig) else None) or os.environ.get(TOKEN_FILE_ENV)
    return Path(chosen) if chosen else KeyRing(keys_dir(config)).token_path(name)


def token_names(config: Config) -> list[str]:
    """The services with a dashboard: each has an access token beside the keys."""
    return [name for name, service in config.services.items() if isinstance(service, WebConfig)]


class Keys:
    """What one service needs for CURVE: its own pair, the key ring, and which server key to pin where."""

    def __init__(self, me: Identity) -> None:
        self.config = me.config
        self.ring = KeyRing(keys_dir(me.config))
        names = key_names(me.config)
        own = os.environ.get(SECRET_KEY_ENV)  # swarm: our own secret, mounted apart from everyone's public keys
        try:
            if own:
                self.public, self.secret = _pair(Path(own))
                return
            if not all((self.ring.directory / f"{name}.key_secret").exists() for name in names):
                self.ring.ensure(names)  # first start: make them (in compose the `keys` service has)
            self.public, self.secret = self.ring.pair(me.key)
        except OSError as exc:
            folder = Path(own).parent if own else self.ring.directory
            raise KeysError(str(folder), "", f"no CurveZMQ keys: {exc.strerror or exc}") from None

    def server_key(self, endpoint: str) -> bytes:
        """The public key of whoever binds `endpoint`: a client talks only to the server it meant."""
        try:
            return self.ring.public(self.config.binder_of(endpoint) or "")
        except OSError as exc:
            problem = f"no CurveZMQ key of the server of {endpoint}: {exc.strerror or exc}"
            raise KeysError(str(self.ring.directory), "", problem) from None


def _pair(path: Path) -> tuple[bytes, bytes]:
    public, secret = _certificate(path)
    if secret is None:
        raise OSError(f"{path.name} holds no secret key")
    return public, secret


def _certificate(path: Path) -> tuple[bytes, bytes | None]:
    """zmq.auth.load_certificate, with a file that holds no key an OSError too."""
    try:
        return zmq.auth.load_certificate(path)
    except ValueError:  # pyzmq's "No public key found in PATH"
        raise OSError(f"{path.name} holds no public key") from None


class KeyAuthentication:
    """ZAP for CURVE: a client is let in when its public key is in the key ring, and its User-Id (readable on
    every message it sends) is the name of that key. Mixed into pyzmq's Authenticator for either loop."""

    ring: KeyRing

    def callback(self, domain: str, key: bytes) -> bool:
        return self.ring.name_of(key) is not None

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.ring.name_of(zmq.utils.z85.encode(client_public_key)) or "?"


def authenticator(base: type[Authenticator], context: zmq.Context, ring: KeyRing) -> Authenticator:
    """A started `base` (Authenticator, or AsyncioAuthenticator for the web) that admits the keys of `ring`."""
    auth = type("Zap", (KeyAuthentication, base), {})(context)
    auth.ring = ring
    auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=auth)
    auth.start()  # before any server socket binds, or its first clients would meet no ZAP handler
    return auth


def answer_zap(auth: Authenticator, frames: list[bytes]) -> None:
    """Answer one ZAP request on the poller loop: the handler is a coroutine that never waits with our callback."""
    step = auth.handle_zap_message(frames)
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()
    raise RuntimeError("the ZAP handler waited, which a key-ring lookup never does")


class Policy:
    """Who may publish what, checked where a message first arrives (its peer's User-Id is known there) [A1]."""

    def __init__(self, config: Config) -> None:
        self.relays = {name for name, s in config.services.items() if isinstance(s, BrokerConfig)}
        self.declared = set(config.topics)
        self.topics = {
            name: {spec.topic for _, spec in s.sockets() if isinstance(spec, Publish)}
            for name, s in config.services.items()
        }

    def refuses(self, peer: str, sender: str, topic: str) -> str | None:
        """Why `peer` may not send this message on `topic` (for a heartbeat: the topic it is `for`); None: it may."""
        if peer in self.relays:
            return None  # the broker checked it where it came in
        if peer == TOOLS:  # the operator's tools may say anything declared
            return None if topic in self.declared else f"'{topic}' is not a declared topic"
        if sender.partition("@")[0] != peer:
            return f"{peer} sent as {sender}"
        if topic not in self.topics.get(peer, ()):
            return f"{peer} may not publish '{topic}'"
        return None
