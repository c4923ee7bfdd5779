"""The `cx-stream` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from service.config import ConfigError, Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"cx-stream: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _cmd_worker(args: argparse.Namespace) -> int:
    from service.worker import run_worker

    return run_worker(_settings())


def _cmd_map(args: argparse.Namespace) -> int:
    from service.map_stage import run_map

    return run_map(_settings(), args)


def _cmd_topics(args: argparse.Namespace) -> int:
    from service.adapters.kafka_admin import ensure_topics

    settings = _settings()
    created = asyncio.run(ensure_topics(settings))
    print("created: " + (", ".join(created) if created else "nothing (all topics exist)"))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from service.tools.simulate import run_simulation

    return run_simulation(_settings(), args)


def _cmd_produce(args: argparse.Namespace) -> int:
    from service.tools.produce import run_produce

    return run_produce(_settings(), args)


def _cmd_import(args: argparse.Namespace) -> int:
    from service.tools.anonymous_bank import run_import

    return run_import(_settings(), args)


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from service.rebuild import run_rebuild

    return run_rebuild(_settings(), args, sys.stdout)


def _cmd_redrive(args: argparse.Namespace) -> int:
    from service.redrive import run_redrive

    return run_redrive(_settings(), args, sys.stdout)


def _cmd_erase(args: argparse.Namespace) -> int:
    from service.erase import run_erase

    return run_erase(_settings(), args, sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cx-stream",
        description="First Contact Resolution, repeat contacts and perception, live from Kafka.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="consume the input topics and serve HTTP")
    worker.set_defaults(func=_cmd_worker)

    mapping = sub.add_parser(
        "map", help="map a platform's raw records (Amazon Connect, Genesys Cloud, or any "
                    "other by a mapping file) to the input topics, from a topic or a JSONL file")
    from service.map_stage import add_arguments as add_map_arguments

    add_map_arguments(mapping)
    mapping.set_defaults(func=_cmd_map)

    topics = sub.add_parser("topics", help="create the input and output topics")
    topics.set_defaults(func=_cmd_topics)

    rebuild = sub.add_parser(
        "rebuild", help="replay the input topics into the state of a new policy version "
                        "(CX_POLICY_VERSION, with the new rules), then switch readers to it")
    rebuild.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                         help="print progress this often (default 10)")
    rebuild.add_argument("--switch-lag", type=int, default=None, metavar="MESSAGES",
                         help="switch once at most this many live messages are left to "
                              "replay (default CX_BATCH_MAX_EVENTS)")
    rebuild.add_argument("--processes", type=int, default=None, metavar="N",
                         help="replay with the partitions split over N processes (default: "
                              "the number of cores)")
    rebuild.add_argument("--no-switch", action="store_true",
                         help="catch up but leave readers on the served version (run again "
                              "to resume and switch)")
    rebuild.add_argument("--drop-version", type=int, default=None, metavar="N",
                         help="instead: delete the state of policy version N (not the served "
                              "one, and only once its workers are stopped)")
    rebuild.set_defaults(func=_cmd_rebuild)

    redrive = sub.add_parser(
        "redrive", help="send dead-lettered events back to their input topic (after a fix); "
                        "those still invalid are dead-lettered again, never looped")
    from service.redrive import add_arguments

    add_arguments(redrive)
    redrive.set_defaults(func=_cmd_redrive)

    erase = sub.add_parser(
        "erase", help="erase customers (GDPR Art. 17): their state, contact views, timers and "
                      "unpublished outputs; tombstones for their contacts; their later and "
                      "replayed events dropped")
    erase.add_argument("customer_ids", nargs="*", metavar="CUSTOMER_ID",
                       help="a customer id, exactly as in the events")
    erase.add_argument("--from-file", default=None, metavar="FILE",
                       help="also the ids in FILE, one a line as written (`-`: standard input)")
    erase.add_argument("--by", default=None, metavar="WHO",
                       help="who asks, for the audit line, e.g. a ticket (default: login@host)")
    erase.add_argument("--skip-topic-scan", action="store_true",
                       help="do not read the contact-enriched topic for contacts of theirs "
                            "older than the stored views (their records get no tombstone)")
    erase.set_defaults(func=_cmd_erase)

    sim = sub.add_parser("simulate", help="publish realistic live contact-centre traffic")
    sim.add_argument("--rate", type=float, default=20.0,
                     help="contacts per wall-clock second, averaged over a day (default 20)")
    sim.add_argument("--customers", type=int, default=5000, help="customer base size")
    sim.add_argument("--seed", type=int, default=None, help="random seed (repeatable traffic)")
    sim.add_argument("--duration", type=str, default=None,
                     help="stop after this much wall-clock time, e.g. 60s, 10m (default: run on)")
    sim.add_argument("--start", type=str, default=None,
                     help="event time of the first contact, RFC 3339, not in the future "
                          "when publishing (default: the past, so that the traffic reaches "
                          "the present at the end of --duration, or a repeat window back when "
                          "running on; a file ends now)")
    sim.add_argument("--speed", type=float, default=1.0,
                     help="event-time seconds per wall-clock second (3600 = an hour a "
                          "second); live traffic never runs ahead of the present: once it "
                          "reaches it, it goes on in real time")
    sim.add_argument("--catch-up", action="store_true",
                     help="publish the event time from --start to the present as fast as "
                          "Kafka takes it (history, at the density of --rate and --speed), "
                          "then go on in real time")
    sim.add_argument("--duplicates", type=float, default=0.01,
                     help="share of events sent twice (default 0.01)")
    sim.add_argument("--malformed", type=float, default=0.002,
                     help="share of malformed events (default 0.002)")
    sim.add_argument("--degrade-queue", action="append", default=[], metavar="QUEUE",
                     help="make this queue solve few problems (its FCR falls); repeatable")
    sim.add_argument("--out", type=str, default=None,
                     help="write JSONL to this file instead of publishing to Kafka")
    sim.set_defaults(func=_cmd_simulate)

    produce = sub.add_parser("produce", help="publish events from a JSONL file")
    produce.add_argument("file", help='JSONL, one {"topic": ..., "event": {...}} per line')
    produce.add_argument("--quiet", action="store_true", help="no progress bar")
    produce.set_defaults(func=_cmd_produce)

    imp = sub.add_parser("import", help="import call records from other formats")
    imp_sub = imp.add_subparsers(dest="format", required=True)
    bank = imp_sub.add_parser(
        "anonymous-bank", help="Technion 'Anonymous Bank' call records (TSV) as call-ended events"
    )
    bank.add_argument("file", help="the TSV file")
    bank.add_argument("--out", default=None,
                      help="write JSONL here (for `cx-stream produce`) instead of publishing")
    bank.add_argument("--utc-offset", default="+03:00",
                      help="UTC offset of the records' local times (default +03:00, Israel "
                           "summer time)")
    bank.add_argument("--quiet", action="store_true", help="no progress bar")
    bank.set_defaults(func=_cmd_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "worker":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from service.adapters.connections import StartupError

    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"cx-stream: configuration error: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"cx-stream: cannot start: {exc}", file=sys.stderr)
        return 3
    return code
