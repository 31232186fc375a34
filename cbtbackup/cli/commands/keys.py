"""``key list | add | remove | passwd | export``: what opens an encrypted repository — passphrases (key slots),
key files and write-only key files."""

from __future__ import annotations

import time

import click

from cbtbackup.cli.app import emit, json_option, repo_option
from cbtbackup.cli.passphrase import read_new_passphrase
from cbtbackup.cli.repository_access import open_repo
from cbtbackup.errors import UsageError

NEW_FILE_HELP = "Read the new passphrase from the first line of FILE (or set CBTBACKUP_NEW_PASSWORD)."


@click.group()
def key() -> None:
    """Key slots: each wraps the repository's master key under one passphrase."""


@key.command(name="list")
@repo_option
@json_option
def list_keys(repo: str, endpoint_url: str | None, as_json: bool) -> None:
    """The key slots: id, when and where each was made; * marks the one that opened the repository."""
    repository = open_repo(repo, endpoint_url)
    slots = repository.keys.slots()
    emit(as_json, {"keys": [{"id": s.id, "created": s.created, "host": s.host, "kdf": s.kdf,
                             "current": s.id == repository.key_slot} for s in slots]},
         [f"{'*' if s.id == repository.key_slot else ' '} {s.id}  "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(s.created))} UTC  {s.host}  {s.kdf}" for s in slots])


@key.command()
@repo_option
@click.option("--new-password-file", metavar="FILE", help=NEW_FILE_HELP)
@json_option
def add(repo: str, endpoint_url: str | None, new_password_file: str | None, as_json: bool) -> None:
    """Add a key slot for a new passphrase (the repository is opened with an existing one)."""
    repository = open_repo(repo, endpoint_url)
    slot = repository.add_key(read_new_passphrase(new_password_file))
    emit(as_json, {"added": slot}, [f"added key {slot}"])


@key.command()
@repo_option
@click.argument("slot")
@json_option
def remove(repo: str, endpoint_url: str | None, slot: str, as_json: bool) -> None:
    """Remove key slot SLOT (not the last, and not the one this command was opened with)."""
    repository = open_repo(repo, endpoint_url)
    repository.keys.remove(slot, repository.key_slot or "")
    emit(as_json, {"removed": slot}, [f"removed key {slot}"])


@key.command()
@repo_option
@click.option("--new-password-file", metavar="FILE", help=NEW_FILE_HELP)
@json_option
def passwd(repo: str, endpoint_url: str | None, new_password_file: str | None, as_json: bool) -> None:
    """Change the passphrase: a new slot for the new one, then the slot of the old one goes."""
    repository = open_repo(repo, endpoint_url)
    if repository.key_slot is None:
        raise UsageError("key passwd replaces the slot of the passphrase that opened the repository; it was "
                         "opened with a key file: give the old passphrase instead, or use key add and key remove")
    old = repository.key_slot
    new = repository.add_key(read_new_passphrase(new_password_file))
    repository.keys.remove(old, new)
    emit(as_json, {"added": new, "removed": old}, [f"added key {new}, removed key {old}"])


@key.command()
@repo_option
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.option("--write-only", is_flag=True,
              help="A write-only key instead: it backs up (full, incr) but reads nothing, not even its own backups.")
@json_option
def export(repo: str, endpoint_url: str | None, file: str, force: bool, write_only: bool, as_json: bool) -> None:
    """Write the repository's master key to FILE (mode 0600), for runs without a passphrase (--key-file).

    Anyone who can read FILE can read and change every backup: keep it where only root reads it. With
    --write-only, FILE lets a host back up and nothing more: restore, list, verify, forget and prune need a
    passphrase or a full key file. The host keeps what its next incremental needs in FILE.state/."""
    repository = open_repo(repo, endpoint_url)
    if write_only:
        key_id = repository.write_only_key(file, replace=force)
        emit(as_json, {"key_file": file, "repository": repository.config.id, "write_only": True, "id": key_id},
             [f"wrote write-only key {key_id} of {repo} to {file}: it backs up into the repository and reads "
              "nothing back"])
        return
    repository.write_key_file(file, replace=force)
    emit(as_json, {"key_file": file, "repository": repository.config.id},
         [f"wrote the master key of {repo} to {file}: whoever can read it can read and change every backup"])
