"""``fedmq device``: enroll, approve, revoke and list devices (on the config's data_dir).

    fedmq device add ID --config FILE [-o BUNDLE] [--role device|operator]
    fedmq device approve ID --config FILE
    fedmq device revoke ID --config FILE [--reason TEXT] [--now]
    fedmq device list --config FILE [--json]
    fedmq device reinstate ID --config FILE [--reason TEXT]
    fedmq device rotate ID --config FILE [--password]

``add`` writes the enrollment bundle (default ``ID.bundle.json``; ``-o -`` for stdout) with
mode 0600 and adds the device's broker credential (reloading a running broker; with TLS the
bundle embeds the CA certificate, and in client-certificate mode a certificate and key issued
for the device). ``revoke``
disables the key at once and leaves the credential to the orchestrator, which removes it once
the device has been told (``Control(revoke)``) and confirmed, or after
``federation.revoke_grace_s``; ``--now`` removes it at once. ``reinstate`` makes a device that
screening isolated active again. ``rotate`` asks a device to rotate its key: the running
orchestrator sends it ``Control(rotate_key)`` (again every minute until it has rotated);
``rotate --password`` gives it a new broker password instead (sealed to the device; the old one
works until the device confirms, or ``federation.password_grace_s``). A running orchestrator
notices every change within about a second. Every mistake is one line on stderr and a
non-zero exit status: 2 for bad usage, 1 for failures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.cli._common import Parser as _Parser
from orchestrator.cli._common import UsageError as _UsageError
from orchestrator.cli._common import one_line_errors
from orchestrator.config import Config, load_config
from orchestrator.devices.commands import (
    DeviceCommandError,
    approve,
    provision,
    reinstate_device,
    revoke,
    write_private,
)
from orchestrator.devices.passwords import request_password_rotation
from orchestrator.devices.rotation import request_rotation
from orchestrator.link.keys import load_or_create_key, public_key_hex
from orchestrator.store import Device, Store
from schemas.signing import key_id
from schemas.topics import valid_id

PROG = "fedmq device"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG,
                     description="Enroll, approve, revoke, reinstate and list devices.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add = commands.add_parser("add", help="create a device and write its enrollment bundle")
    add.add_argument("device_id", metavar="ID")
    add.add_argument("--config", required=True, metavar="FILE")
    add.add_argument("-o", "--output", metavar="BUNDLE",
                     help="bundle file (default ID.bundle.json; '-' for stdout)")
    add.add_argument("--role", choices=["device", "operator"], default="device")

    for name, text in (("approve", "activate a device whose key awaits approval"),
                       ("revoke", "disable a device's key and broker credential"),
                       ("reinstate", "make a device isolated by screening active again"),
                       ("rotate", "ask a device to rotate its key, or its broker password "
                                  "(a running orchestrator sends the request)")):
        cmd = commands.add_parser(name, help=text)
        cmd.add_argument("device_id", metavar="ID")
        cmd.add_argument("--config", required=True, metavar="FILE")
        if name in ("revoke", "reinstate"):
            cmd.add_argument("--reason", default="", help="recorded in the audit log")
        if name == "revoke":
            cmd.add_argument("--now", action="store_true",
                             help="remove the broker credential at once (the device is not "
                                  "told; it only sees refused connections)")
        if name == "rotate":
            cmd.add_argument("--password", action="store_true",
                             help="a new broker password (sealed to the device) instead of a "
                                  "new key")

    list_ = commands.add_parser("list", help="list devices")
    list_.add_argument("--config", required=True, metavar="FILE")
    list_.add_argument("--json", action="store_true", help="one JSON array on stdout")
    return parser


def _open_store(config: Config) -> contextlib.AbstractAsyncContextManager[Store]:
    config.federation.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Store.open(config.federation.store_path, federation_id=config.federation.id)


async def _add(config: Config, args: argparse.Namespace) -> int:
    output = None if args.output == "-" else Path(args.output or f"{args.device_id}.bundle.json")
    if output is not None and output.exists():
        raise DeviceCommandError(f"{output} already exists; remove it or choose another -o")
    key = await asyncio.to_thread(load_or_create_key, config.federation.key_path)
    async with _open_store(config) as store:
        bundle = await provision(store, config, args.device_id,
                                 orchestrator_key=public_key_hex(key), role=args.role)
    if output is None:
        sys.stdout.write(bundle.to_json())
    else:
        await asyncio.to_thread(write_private, output, bundle.to_json())
        print(f"{PROG}: added {args.device_id!r} ({args.role}); bundle written to {output} "
              "(keep it secret)", file=sys.stderr)
    return 0


async def _approve(config: Config, args: argparse.Namespace) -> int:
    async with _open_store(config) as store:
        await approve(store, args.device_id)
    print(f"{PROG}: approved {args.device_id!r}", file=sys.stderr)
    return 0


async def _revoke(config: Config, args: argparse.Namespace) -> int:
    async with _open_store(config) as store:
        await revoke(store, config, args.device_id, reason=args.reason, immediate=args.now)
    if args.now:
        print(f"{PROG}: revoked {args.device_id!r}; its key is refused and its broker "
              "credential removed", file=sys.stderr)
    else:
        grace = config.federation.revoke_grace_s
        print(f"{PROG}: revoked {args.device_id!r}; its key is refused now; the running "
              f"orchestrator tells the device and removes its broker credential when it "
              f"confirms or after {grace:g} s (at its next start if it is not running; "
              "--now removes it at once)", file=sys.stderr)
    return 0


def _row(d: Device) -> dict[str, Any]:
    return {
        "device_id": d.device_id, "role": d.role, "status": d.status,
        "key_id": key_id(d.public_key) if d.public_key else None,
        "device_class": d.device_class, "created_ms": d.created_ms,
        "enrolled_ms": d.enrolled_ms, "last_seen_ms": d.last_seen_ms,
        "accepted": d.accepted_count, "rejected": d.rejected_count,
        "quarantined": d.quarantine_count,
    }


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _list(config: Config, args: argparse.Namespace) -> int:
    async with _open_store(config) as store:
        devices = await store.list_devices()
    rows = [_row(d) for d in devices]
    if args.json:
        print(json.dumps(rows))
        return 0
    header = ("ID", "ROLE", "STATUS", "KEY", "LAST SEEN (UTC)", "ACCEPTED", "REJECTED")
    table = [header] + [
        (r["device_id"], r["role"], r["status"], r["key_id"] or "-", _when(r["last_seen_ms"]),
         str(r["accepted"]), str(r["rejected"]))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return 0


async def _reinstate(config: Config, args: argparse.Namespace) -> int:
    async with _open_store(config) as store:
        await reinstate_device(store, config, args.device_id, reason=args.reason)
    print(f"{PROG}: reinstated {args.device_id!r}", file=sys.stderr)
    return 0


async def _rotate(config: Config, args: argparse.Namespace) -> int:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    if args.password:
        async with _open_store(config) as store:
            await request_password_rotation(store, args.device_id, now_ms=now_ms,
                                            managed=config.password_file is not None)
        print(f"{PROG}: new broker password for {args.device_id!r} requested; the running "
              "orchestrator sends it sealed to the device and switches the broker's entry "
              "once the device confirms (audited password_rotated)", file=sys.stderr)
        return 0
    async with _open_store(config) as store:
        await request_rotation(store, args.device_id, now_ms=now_ms)
    print(f"{PROG}: key rotation of {args.device_id!r} requested; the running orchestrator "
          "asks the device (at its next start if it is not running); `fedmq device list` "
          "shows the new key once the device has rotated", file=sys.stderr)
    return 0


_COMMANDS = {"add": _add, "approve": _approve, "revoke": _revoke, "list": _list,
             "reinstate": _reinstate, "rotate": _rotate}


@one_line_errors(PROG)
def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "device_id", None) is not None and not valid_id(args.device_id):
        raise _UsageError(f"invalid device id {args.device_id!r}: use 1-64 letters, "
                          "digits, '_', '.', '-'")
    config = load_config(args.config)
    return asyncio.run(_COMMANDS[args.command](config, args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
