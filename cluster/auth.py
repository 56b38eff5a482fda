"""Who the cluster is and how to talk to it: the state `speechtune cluster up` keeps (HeadState),
its token, the auth header, and the Jobs API client with its errors explained. Shared by
``cluster.head`` (starting and stopping the head) and ``cluster.jobs`` (submitting), which
import this module and not each other."""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from asr_core.errors import InputError


class ClusterError(RuntimeError):
    """A cluster command that cannot be carried out (already running, port taken, start failed)."""


def state_dir() -> Path:
    return Path(os.environ.get("SPEECHTUNE_HOME") or Path.home() / ".speechtune") / "cluster"


@dataclass
class HeadState:
    pid: int                 # `ray start --block`: leader of the session that holds our processes
    sid: int
    gcs_address: str
    dashboard_url: str
    temp_dir: str
    token_file: str | None
    num_cpus: float | None
    num_gpus: float | None
    started: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadState":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def read_state() -> HeadState | None:
    f = state_dir() / "cluster.json"
    if not f.is_file():
        return None
    try:
        return HeadState.from_dict(json.loads(f.read_text()))
    except (ValueError, TypeError) as e:
        raise ClusterError(f"{f}: unreadable cluster state ({e}); remove it if no cluster runs") from None


def read_token(st: HeadState | None) -> str | None:
    if st is None or not st.token_file or not Path(st.token_file).is_file():
        return None
    return Path(st.token_file).read_text().strip()


def auth_headers(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def resolve_address(address: str | None) -> tuple[str, str | None]:
    """The Jobs API address and the token to send: ``--address``, else ``RAY_API_SERVER_ADDRESS``
    / ``RAY_ADDRESS`` (http), else the cluster ``speechtune cluster up`` started here. The token:
    ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, else that cluster's own token file."""
    st = read_state()
    if address is None:
        env = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS", "")
        if env.startswith("http"):
            address = env
        elif st is not None:
            address = st.dashboard_url
        else:
            raise InputError("--address", "no cluster given and none started here: run `speechtune cluster up`, "
                                          "or pass --address http://HEAD:8265")
    address = address.rstrip("/")
    if not address.startswith(("http://", "https://")):
        address = f"http://{address}"
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token and os.environ.get("RAY_AUTH_TOKEN_PATH"):
        p = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        token = p.read_text().strip() if p.is_file() else None
    if not token and st is not None and st.dashboard_url.rstrip("/") == address:
        token = read_token(st)
    return address, token


def client(address: str, token: str | None):
    """A JobSubmissionClient (the connection is checked on creation)."""
    from ray.job_submission import JobSubmissionClient

    with api_errors(address, token):
        return JobSubmissionClient(address, headers=auth_headers(token))


@contextlib.contextmanager
def api_errors(address: str, token: str | None):
    """An unreachable address or a refused token becomes an InputError saying which and what to do."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except ConnectionError as e:
        raise InputError(address, f"cannot reach a Ray Jobs API there ({_first_line(e)}); is the cluster up "
                                  "(`speechtune cluster status`) and is this the dashboard's address (port 8265)?"
                         ) from None
    except AuthenticationError:
        raise InputError(address, "the cluster requires token authentication and "
                                  + ("refused the token given" if token else "no token was given")
                                  + ": set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to the cluster's token file"
                         ) from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
