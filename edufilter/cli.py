"""The one `edufilter` command. Each subcommand lives in its own module and is
imported only when it runs, so `edufilter --help` stays fast and a broken
optional dependency of one stage never breaks the others."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from edufilter import __version__

# name -> (module:function taking argv and returning an exit status, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "label": ("edufilter.labelling.cli:main", "label a sample of documents 0-5 with an LLM (or replay recorded labels)"),
    "train": ("classifier.cli:train_main", "train an educational-value classifier on labels"),
    "evaluate": ("classifier.cli:evaluate_main", "evaluate classifiers against held-out labels"),
    "score": ("jobs.score:main", "score corpus shards with a classifier on Ray"),
    "select": ("jobs.select:main", "select a corpus from scored shards by threshold or token budget"),
    "serve": ("service.cli:main", "serve classifiers over HTTP (FastAPI + uvicorn)"),
    "pretrain": ("jobs.pretrain.cli:main", "pretrain a Phi-architecture model on a selected corpus"),
    "demo": ("edufilter.demo:main", "run the whole product end to end on the bundled sample"),
}

NOT_IMPLEMENTED = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edufilter",
        description="Find the educational part of web-scale data: label, train, serve, score, select, pretrain.",
        epilog="Run `edufilter COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"edufilter {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def resolve(command: str):
    target, _ = COMMANDS[command]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None  # the stage's module does not exist yet
        raise
    return getattr(module, func_name, None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Everything after the command name belongs to the command's own parser: split there, since
    # argparse's REMAINDER refuses a remainder that starts with an option (`pretrain --corpus ...`).
    split = next((i for i, arg in enumerate(argv) if arg in COMMANDS), len(argv))
    args = build_parser().parse_args(argv[: split + 1])
    args.args = list(argv[split + 1 :])
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    handler = resolve(args.command)
    if handler is None:
        print(f"edufilter {args.command}: not implemented yet", file=sys.stderr)
        return NOT_IMPLEMENTED
    try:
        return int(handler(args.args) or 0)
    except KeyboardInterrupt:
        print(f"edufilter {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
