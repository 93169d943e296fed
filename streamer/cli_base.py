"""What every ``logad`` command shares: the group that gives each subcommand ``-v``, the global logging options
(``logbert_core.logs`` does the work), ``--version``, and the settings loader that turns a bad config into exit 2.

``streamer.cli`` defines the ``logad`` group with these; ``streamer.cli_model`` and ``streamer.cli_alerts`` add their
subgroups to it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from logbert_core import logs
from logbert_core.build import describe
from logbert_core.config import ConfigError, Settings, load_settings

log = logging.getLogger("logad")


def read_settings(config: str | None, **overrides: Any) -> Settings:
    """The settings of ``config`` and the environment; a configuration error is printed and exits 2."""
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        click.echo(f"logad: configuration error\n{exc}", err=True)
        sys.exit(2)


def setup_logging(verbose: bool, log_format: str, log_level: str | None) -> None:
    """One handler on stderr, text or JSON; WARNING unless LOGAD_LOG_LEVEL or -v says more."""
    try:
        logs.install(log_format, log_level, verbose, log)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--log-level' / LOGAD_LOG_LEVEL") from exc


def _verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``-v`` after the subcommand (``logad run -v``): the same as before it."""
    if value:
        logs.lower_to_info()


def print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--version``: what ``logbert_core.build.describe`` says, then exit."""
    if value and not ctx.resilient_parsing:
        click.echo(describe("logad"))
        ctx.exit()


class Group(click.Group):
    """A group whose commands (and subgroups' commands) all accept ``-v``, so it works anywhere on the line."""

    group_class = type  # subgroups are Group too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any("--verbose" in p.opts for p in cmd.params):
            cmd.params.append(click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, callback=_verbose,
                                           help="Log progress details to stderr (as logad -v)."))
        super().add_command(cmd, name)


def quiet_kafka() -> None:
    """For the interactive commands: errors are reported by the command itself; kafka-python's connection retries
    are noise unless -v asked for details."""
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
