"""Mosquitto tooling: password hashes and files, reloads, and a supervised dev broker.

Standard library and asyncio only, so field tools can use it without the server extras.
"""

from .config import DEFAULT_ACL, DEV_TEMPLATE, pick_free_port, render_dev_config
from .errors import BrokerError, CredentialError
from .passwords import (
    PasswordFile,
    generate_password,
    hash_password,
    validate_username,
    verify_password,
)
from .process import find_mosquitto, read_pid_file, reload_broker
from .supervisor import ORCHESTRATOR_USER, MosquittoBroker

__all__ = [
    "DEFAULT_ACL",
    "DEV_TEMPLATE",
    "ORCHESTRATOR_USER",
    "BrokerError",
    "CredentialError",
    "MosquittoBroker",
    "PasswordFile",
    "find_mosquitto",
    "generate_password",
    "hash_password",
    "pick_free_port",
    "read_pid_file",
    "reload_broker",
    "render_dev_config",
    "validate_username",
    "verify_password",
]
