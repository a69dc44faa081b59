"""Placeholder: being written."""

from __future__ import annotations

import argparse

from streamledger.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    raise ConfigError("'fraud evaluate' is not available yet")
