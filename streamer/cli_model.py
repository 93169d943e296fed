"""``logad model``: which model bundle the detectors of a namespace run, through the Redis pointer
``<namespace>:model:current`` that ``streamer.worker`` reads between batches (hot reload)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from streamer.cli_base import Group, read_settings


@click.group(cls=Group)
def model() -> None:
    """Which model bundle the detectors run (hot reload through a Redis pointer)."""


@model.command("use")
@click.argument("bundle_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--config", type=click.Path(dir_okay=False), required=True)
def model_use(bundle_dir: str, config: str) -> None:
    """Point every `logad run` of this namespace at BUNDLE_DIR (checked first); they switch between batches.
    Rolling back is pointing back at the previous bundle."""
    import redis as redis_lib

    from logbert_core.bundle import BundleError, load_bundle
    from streamer.errors import StartupError
    from streamer.worker import check_bundle_settings

    s = read_settings(config)
    path = Path(bundle_dir).resolve()
    try:
        bundle = load_bundle(path)
        check_bundle_settings(s, bundle)
    except (BundleError, StartupError) as exc:
        click.echo(f"logad model use: refused: {exc}", err=True)
        sys.exit(2)
    key = f"{s.redis.namespace}:model:current"
    try:
        from streamer.windows import client_for

        r = client_for(s.redis.url, s.redis.cluster, socket_timeout=5)
        previous = r.getset(key, str(path))
    except redis_lib.RedisError as exc:
        click.echo(f"logad model use: Redis unavailable ({exc}); nothing changed", err=True)
        sys.exit(1)
    was = _text(previous) if previous else "(the --model directory of each detector)"
    click.echo(f"{key} -> {path} (version {bundle.version}); was {was}")


def _text(value: bytes | str) -> str:
    """A Redis reply as text (redis-py returns bytes unless the client decodes responses)."""
    return value.decode() if isinstance(value, bytes) else value


@model.command("show")
@click.option("--config", type=click.Path(dir_okay=False), required=True)
def model_show(config: str) -> None:
    """Print the bundle the detectors are pointed at, if a pointer is set."""
    import redis as redis_lib

    s = read_settings(config)
    key = f"{s.redis.namespace}:model:current"
    try:
        from streamer.windows import client_for

        value = client_for(s.redis.url, s.redis.cluster, socket_timeout=5).get(key)
    except redis_lib.RedisError as exc:
        click.echo(f"logad model show: Redis unavailable ({exc})", err=True)
        sys.exit(1)
    click.echo(_text(value) if value else f"{key} is not set: each detector runs its --model directory")
