"""What every command shares: settings, a daemon client, output mode."""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from banger.api.client import Client
from banger.cli.lifecycle import connect, daemon_socket
from banger.cli.render import warn
from banger.config import Settings, load_settings


def _drift_warning(daemon_version: str) -> None:
    warn(
        f"bangerd is running version {daemon_version}, this banger is different; "
        "restart it: banger daemon stop && banger daemon start"
    )


@dataclass
class CliContext:
    _settings: Settings | None = None
    _client: Client | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def client(self) -> Client:
        """The daemon client; starts bangerd on first use when it is not running."""
        if self._client is None:
            self._client = connect(self.settings, on_version_drift=_drift_warning)
        return self._client

    def last_op_id(self) -> str | None:
        """The op id of the last answer the daemon gave this command, if any."""
        return self._client.last_op_id if self._client is not None else None

    def bare_client(self) -> Client:
        """A client that never starts the daemon nor warns of drift (daemon start/stop/status)."""
        return Client(daemon_socket(self.settings))


pass_ctx = click.make_pass_decorator(CliContext, ensure=True)

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Print names only.")
