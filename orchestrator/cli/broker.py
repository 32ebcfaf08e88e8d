"""``fedmq broker``: manage the Mosquitto password file and reload the broker.

    fedmq broker passwd add ID --file PASSWD [--password P | --password-stdin] [--create]
    fedmq broker passwd remove ID --file PASSWD
    fedmq broker passwd list --file PASSWD
    fedmq broker reload (--pid PID | --pid-file FILE)

``add`` without a password generates one and prints it (alone) on stdout. Every mistake
gives one line on stderr and a non-zero exit status: 2 for bad usage, 1 for failures.
"""

from __future__ import annotations

import argparse
import sys

from orchestrator.broker import (
    BrokerError,
    PasswordFile,
    generate_password,
    read_pid_file,
    reload_broker,
)
from orchestrator.cli._common import Parser as _Parser
from orchestrator.cli._common import one_line_errors

PROG = "fedmq broker"


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Manage broker credentials and reloads.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    passwd = commands.add_parser("passwd", help="add, remove or list password-file users")
    actions = passwd.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="add a user or change its password")
    add.add_argument("user", metavar="ID", help="device id, operator or 'orchestrator'")
    add.add_argument("--file", required=True, metavar="PASSWD", help="Mosquitto password file")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--password", metavar="P", help="the password (default: generate one)")
    secret.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin")
    add.add_argument("--create", action="store_true", help="create PASSWD if it does not exist")

    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("user", metavar="ID")
    remove.add_argument("--file", required=True, metavar="PASSWD")

    list_ = actions.add_parser("list", help="list the users")
    list_.add_argument("--file", required=True, metavar="PASSWD")

    reload = commands.add_parser(
        "reload", help="make a running broker re-read its password file and ACL (SIGHUP)"
    )
    target = reload.add_mutually_exclusive_group(required=True)
    target.add_argument("--pid", type=int, metavar="PID", help="the broker's process id")
    target.add_argument("--pid-file", metavar="FILE", help="the broker's pid_file")
    return parser


def _passwd(args: argparse.Namespace) -> int:
    passwords = PasswordFile(args.file)
    if args.action == "list":
        if not passwords.exists():
            raise BrokerError(f"password file {args.file} does not exist")
        for user in passwords.users():
            print(user)
        return 0
    if args.action == "remove":
        if not passwords.exists():
            raise BrokerError(f"password file {args.file} does not exist")
        if not passwords.remove(args.user):
            raise BrokerError(f"no user {args.user!r} in {args.file}")
        print(f"{PROG}: removed {args.user!r}; reload the broker to apply", file=sys.stderr)
        return 0
    # add
    if not passwords.exists() and not args.create:
        raise BrokerError(f"password file {args.file} does not exist (use --create)")
    generated = args.password is None and not args.password_stdin
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password is not None:
        password = args.password
    else:
        password = generate_password()
    existed = args.user in passwords.users() if passwords.exists() else False
    passwords.set(args.user, password)
    verb = "changed the password of" if existed else "added"
    print(f"{PROG}: {verb} {args.user!r}; reload the broker to apply", file=sys.stderr)
    if generated:
        print(password)
    return 0


def _reload(args: argparse.Namespace) -> int:
    pid = args.pid if args.pid is not None else read_pid_file(args.pid_file)
    reload_broker(pid)
    print(f"{PROG}: sent SIGHUP to pid {pid}", file=sys.stderr)
    return 0


@one_line_errors(PROG)
def main(argv: list[str]) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "passwd":
        return _passwd(args)
    return _reload(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
