"""``streamledger fraud ...`` commands. Each module adds its own options and runs itself."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# subcommand -> (module under streamledger.fraud, help)
COMMANDS = {
    "simulate": ("simulate", "produce realistic exchange activity with labelled incidents"),
    "run": ("pipeline", "detect fraud on the verified input ledger, write alerts as ledgers"),
    "evaluate": ("evaluate", "precision, recall and F1 of alerts against incident labels"),
    "watch": ("watch", "live view: event rate, alerts as they arrive, per-pattern counts"),
    "load": ("realtime", "append simulated events at a fixed rate, event time = wall clock"),
    "bench": ("latency", "alert latency and consumer lag of the pipeline on Kafka under load"),
}


def add_commands(sub: Any) -> None:
    """Add ``fraud simulate|run|evaluate|watch|load|bench`` to the CLI's subparsers."""
    fraud = sub.add_parser("fraud", help="real-time fraud detection on verified streams")
    fraud_sub = fraud.add_subparsers(dest="fraud_command", metavar="ACTION")
    fraud_sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        parser = fraud_sub.add_parser(name, help=help_text)
        importlib.import_module(f"streamledger.fraud.{module}").add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    module, _ = COMMANDS[args.fraud_command]
    return importlib.import_module(f"streamledger.fraud.{module}").main(args)
