"""``mlops``: run any lifecycle step from a shell, outside Airflow (same code as the DAG tasks).

    mlops example-data wine --out data/      # a real table to try it on (scikit-learn's datasets)
    mlops init credit --source applicants=exports/applicants.csv --target Status --positive bad
    mlops check churn              # every problem of include/churn/spec.yaml, one line each
    mlops ingest churn transactions exports/transactions-*.csv
    mlops ingest churn customers customers.parquet --as-of 2026-01-05
    mlops inbox churn              # the drop folder the churn_ingest DAG watches (--land: land it now)
    mlops simulate churn
    mlops validate churn 2026-01-05
    mlops features churn 2026-01-05
    mlops train churn --as-of 2026-02-05 --reason "first model"
    mlops score churn 2026-02-06
    mlops monitor churn 2026-02-06
    mlops rollback churn --reason "conversion dropped after v7"   # @champion back to the previous one
    mlops env                      # the environments (dev, staging, prod), which one this is, where each keeps its state
    mlops release churn --to staging --reason "weekly release"     # dev's champion, copied and tested in staging
    mlops release churn --to prod --reason "weekly release" --approved-by risk-review
    mlops --env prod rollback churn --reason "..."                  # any command, acting on another environment
    mlops rollout status churn     # the candidate's share, steps and decisions (start/judge/stop too)
    mlops rollout drill churn --slow-ms 1500   # roll out a slowed copy of the champion: it must be stopped
    mlops api-key path             # the scoring service's key file (rotate: replace the keys)
    mlops summary churn
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import getpass
import json
import logging
import re
import sys
from pathlib import Path

from pipelines import releases, runtime
from pipelines.core.config import settings
from pipelines.core.environments import acting_in
from pipelines.core.errors import Refusal
from pipelines.core.spec import SPEC_FILE, TaskType, check_spec, load_spec
from pipelines.data.example_data import export
from pipelines.data.ingest import IngestError
from pipelines.data.labels import label_problems
from pipelines.data.spec_init import draft, write_use_case
from pipelines.release.decision import Review
from pipelines.release.rollback import RollbackRefused
from pipelines.report import summarize
from pipelines.serving.guard import ensure_keys, rotate_keys


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.env:
            runtime.environments().get(args.env)   # an unknown name: one line naming the environments
        with acting_in(args.env or None):
            return _command(args, runtime)
    except Refusal as exc:
        if args.debug:
            raise
        print(f"mlops {args.command}: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The ``mlops`` command line: a sub-command per lifecycle step, grouped as the stages are."""
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of a refusal too (bad input, failed rule, missing data)")
    parser.add_argument("--env", default=None, metavar="ENVIRONMENT",
                        help="act on this environment (dev, staging, prod; default: MLOPS_ENV, else dev)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_setup_commands, _add_data_commands, _add_step_commands, _add_release_commands,
                _add_serving_commands):
        add(sub)
    return parser


def _add_setup_commands(sub) -> None:
    """init, example-data, check: a use case's spec from its data, and its check."""
    init = sub.add_parser("init", help="profile data and draft include/<uc>/spec.yaml and expectations.yaml")
    init.add_argument("use_case")
    init.add_argument("--source", action="append", required=True, metavar="NAME=PATH",
                      help="a source and its file, folder or glob (repeatable)")
    init.add_argument("--target", required=True, help="the label column")
    init.add_argument("--positive", default=None, help="the target's value that is the positive class")
    init.add_argument("--timestamp", default=None, help="the event timestamp column (none: snapshots)")
    init.add_argument("--entity", default=None, help="the column that identifies an entity")
    init.add_argument("--task", default="binary", choices=["binary", "multiclass", "regression"])
    init.add_argument("--force", action="store_true", help="replace an existing spec")
    example = sub.add_parser("example-data", help="export a dataset scikit-learn ships as a CSV to try the project on")
    example.add_argument("dataset", choices=["breast_cancer", "diabetes", "wine"])
    example.add_argument("--out", default="data", help="folder of the CSV (default: data/)")
    example.add_argument("--missing", type=float, default=0.0, metavar="SHARE",
                         help="blank this share of feature values and labels at random")
    check = sub.add_parser("check", help="validate use-case specs (all of them when none is named)")
    check.add_argument("use_case", nargs="*", help="use-case names or spec folders/files")


def _add_data_commands(sub) -> None:
    """ingest, inbox: landing a team's files."""
    ingest = sub.add_parser("ingest", help="land CSV/Parquet files as a source's raw daily partitions")
    ingest.add_argument("use_case")
    ingest.add_argument("source", help="a source of the use case's spec")
    ingest.add_argument("location", help="a file, a folder or a glob of CSV/Parquet files")
    ingest.add_argument("--as-of", default=None, type=iso_date, help="date of a snapshot without a timestamp column")
    inbox = sub.add_parser("inbox", help="print the use case's drop folder (the ingest DAG's); --land lands its files now")
    inbox.add_argument("use_case")
    inbox.add_argument("--land", action="store_true",
                       help="land the files waiting there, as the ingest DAG does (archive or reject each)")


def _add_step_commands(sub) -> None:
    """simulate, summary, and the dated steps of the daily DAG; train."""
    for name in ("simulate", "summary"):
        sub.add_parser(name).add_argument("use_case")
    for name in ("validate", "features", "score", "monitor", "performance"):
        p = sub.add_parser(name)
        p.add_argument("use_case")
        p.add_argument("ds", type=iso_date, help="date, YYYY-MM-DD")
        if name == "validate":
            p.add_argument("--allow-empty-redelivery", "--allow-shrinking-redelivery", action="store_true",
                           dest="allow_empty_redelivery",
                           help="let an empty or much smaller delivery replace a clean partition that has rows")
    train = sub.add_parser("train", help="train a challenger and promote it if better")
    train.add_argument("use_case")
    train.add_argument("--as-of", default=None, type=iso_date)
    train.add_argument("--reason", default="manual run from the CLI")


def _add_release_commands(sub) -> None:
    """rollback: @champion back to an earlier version; env and release: moving between environments."""
    env = sub.add_parser("env", help="the environments: which one this is, each one's state and registry prefix")
    env.add_argument("action", nargs="?", default="show", choices=["show", "copy-data"])
    env.add_argument("use_case", nargs="?", help="copy-data: the use case whose data is copied")
    env.add_argument("--from", dest="source", default=None, help="copy-data: the environment copied from")
    env.add_argument("--to", dest="target", default=None, help="copy-data: the environment copied into")
    release = sub.add_parser("release", help="move a model one environment on: test it in staging, or put it in prod")
    release.add_argument("use_case")
    release.add_argument("--to", required=True, help="the environment released into (staging, prod)")
    release.add_argument("--version", default=None, help="the version of the environment before (default: its champion)")
    release.add_argument("--reason", required=True, help="why: recorded on the versions of both environments")
    release.add_argument("--by", default=None, help="who asks (default: the current user)")
    release.add_argument("--approved-by", default=None,
                         help="who approved a release into an environment that requires approval (prod)")
    release.add_argument("--comment", default="", help="the approver's comment (recorded)")
    rollback = sub.add_parser("rollback", help="move @champion back to the previous champion (or --to VERSION)")
    rollback.add_argument("use_case")
    rollback.add_argument("--reason", required=True, help="why: recorded on the model versions")
    rollback.add_argument("--to", default=None, help="a version that was champion before (default: the previous one)")
    rollback.add_argument("--by", default=None, help="who asks (default: the current user)")


def _add_serving_commands(sub) -> None:
    """serve, api-key, rollout, online-store: the scoring service and what it serves."""
    serve = sub.add_parser("serve", help="run the online scoring service of @champion (FastAPI, uvicorn)")
    serve.add_argument("use_case", nargs="*", help="use cases to serve (default: every spec)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8090)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api_key = sub.add_parser("api-key", help="the scoring service's API keys: where they are, or rotate them")
    api_key.add_argument("action", choices=["path", "rotate"],
                         help="path: print the key file (mode 0600); rotate: replace every key by a new one")
    rollout = sub.add_parser("rollout", help="a version's rollout to live traffic: status, start, judge, stop")
    rollout.add_argument("action", choices=["status", "start", "load-test", "judge", "stop", "drill"])
    rollout.add_argument("use_case")
    rollout.add_argument("--version", default=None, help="start: the version to roll out")
    rollout.add_argument("--reason", default="started from the CLI", help="start/stop: why (recorded)")
    rollout.add_argument("--by", default=None, help="who asks (default: the current user)")
    rollout.add_argument("--timelines", type=int, default=1, help="status: step-by-step history of this many rollouts")
    rollout.add_argument("--slow-ms", type=float, default=1500.0,
                         help="drill: roll out a copy of the champion this much slower per request")
    online = sub.add_parser("online-store", help="load a day's features into the online store the service reads")
    online.add_argument("use_case")
    online.add_argument("ds", type=iso_date, help="date, YYYY-MM-DD (the newest date the store has seen wins)")


def iso_date(text: str) -> str:
    """A strict YYYY-MM-DD date (argparse type): anything else is a one-line usage error."""

    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date of the form YYYY-MM-DD") from None


def _command(args: argparse.Namespace, runtime) -> int:
    """Run the parsed command; a refusal propagates to :func:`main`."""
    if args.command == "check":
        return check_specs(args.use_case)
    if args.command == "init":
        return init_use_case(args)
    if args.command == "example-data":
        print(export(args.dataset, Path(args.out), args.missing))
        return 0
    if args.command == "api-key":
        path = rotate_keys() if args.action == "rotate" else ensure_keys()
        print(path)   # never the key itself: it stays in the file, readable by its owner only
        if args.action == "rotate":
            print("rotated: clients read the new key from the file; a running service takes it within a second",
                  file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlops").info("environment %s (lake %s)", settings().env, settings().lake)
    if args.command == "serve":
        for name in args.use_case:
            runtime.spec(name)   # an unknown use case fails here, with the specs found
        from pipelines.serving.service import serve  # FastAPI: 0.2 s of start no other command needs

        serve(args.use_case, args.host, args.port, args.workers)
        return 0
    # stdout carries only the result, so that scripts can parse it; what the libraries print on
    # the way (MLflow's run links, progress) goes to stderr with the logs
    with contextlib.redirect_stdout(sys.stderr):
        result = _run(args, runtime)
    if isinstance(result, int):
        return result
    print(result if isinstance(result, str) else json.dumps(result, indent=2, default=str))
    return 0


def init_use_case(args: argparse.Namespace) -> int:
    """Draft a use case's spec and expectations from its data, check them, and only then write
    them (a draft with problems is printed, never left behind to break other commands)."""

    sources = dict(item.split("=", 1) for item in args.source if "=" in item)
    if len(sources) != len(args.source):
        print("--source takes NAME=PATH", file=sys.stderr)
        return 2
    spec_text, rules_text = draft(args.use_case, sources, args.target, args.positive, args.timestamp,
                                  args.entity, TaskType(args.task))
    folder = write_use_case(settings().include, args.use_case, spec_text, rules_text, args.force)
    print(f"wrote {folder}/spec.yaml and expectations.yaml; read them, then: "
          f"mlops ingest {args.use_case} <source> <files> --as-of YYYY-MM-DD")
    return 0


def check_specs(names: list[str]) -> int:
    """Print every problem of the named specs (or of all under the include folder); 1 if any."""

    include = settings().include
    paths = [Path(n) if Path(n).exists() else include / n for n in names] or \
        sorted(p.parent for p in include.glob(f"*/{SPEC_FILE}"))
    if not paths:
        print(f"no use-case spec under {include}", file=sys.stderr)
        return 1
    failed = 0
    environments = runtime.environments().environments
    for path in paths:
        problems = check_spec(path, environments) or _data_problems(path)
        failed += bool(problems)
        print("\n".join(problems) if problems else f"{path}: ok")
    return 1 if failed else 0


def _data_problems(path) -> list[str]:
    """A valid spec against what has landed for it (see pipelines.data.labels.label_problems)."""

    spec = load_spec(path)
    file = path / SPEC_FILE if path.is_dir() else path
    return [f"{file}: {problem}" for problem in label_problems(spec, runtime.lake())]


def _run(args: argparse.Namespace, runtime) -> dict | str | int:
    """The command's result (JSON-able, or a text report), or an exit code when there is none."""
    return STEPS[args.command](args, runtime)


def _ingest(args, runtime):
    try:
        return runtime.ingest(args.use_case, args.source, args.location, args.as_of)
    except IngestError as exc:
        print(f"mlops ingest: refused, nothing written: {exc}", file=sys.stderr)
        return 1


def _inbox(args, runtime):
    if not args.land:
        return str(runtime.inbox(args.use_case))
    result = runtime.ingest_inbox(args.use_case)
    if result["rejected"]:   # the rest landed: show it all, and exit 1
        print(json.dumps(result, indent=2))
        print(f"{len(result['rejected'])} file(s) refused, each moved to rejected/ with its error beside it",
              file=sys.stderr)
        return 1
    return result


def _rollback(args, runtime):
    try:
        return runtime.rollback(args.use_case, args.reason, args.by or getpass.getuser(), args.to)
    except RollbackRefused as exc:
        print(f"mlops rollback: refused, @champion unchanged: {exc}", file=sys.stderr)
        return 1


def _rollout(args, runtime):
    uc, by = args.use_case, args.by or getpass.getuser()
    if args.action == "status":
        return runtime.rollout_status(uc, args.timelines)
    if args.action == "start":
        if not args.version:
            print("rollout start needs --version", file=sys.stderr)
            return 2
        return runtime.start_rollout(uc, args.version, args.reason, by)
    if args.action == "load-test":
        return runtime.rollout_load_test(uc)
    if args.action == "judge":
        return runtime.judge_rollout(uc)
    if args.action == "drill":
        return runtime.rollout_drill(uc, args.slow_ms, by)
    return runtime.end_rollout(uc, args.reason, by)


def _env(args, runtime):
    if args.action == "show":
        return releases.environment_overview()
    if not (args.use_case and args.source and args.target):
        print("env copy-data needs a use case, --from and --to", file=sys.stderr)
        return 2
    return releases.copy_data(args.use_case, args.source, args.target)


def _release(args, runtime):
    by = args.by or getpass.getuser()
    review = Review(True, args.approved_by, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    args.comment) if args.approved_by else None
    return releases.release(args.use_case, args.to, args.version, by, args.reason, review)


def _with_champion(args, runtime):
    """score and monitor: the champion's work of a day; 2 when there is no champion yet."""
    uc = args.use_case
    champion = runtime.resolve_champion(uc)
    if champion is None:
        print(f"mlops {args.command}: no champion yet: {runtime.why_no_champion(uc)}", file=sys.stderr)
        return 2
    if args.command == "score":
        return {"ds": args.ds, "scored_rows": runtime.score(uc, args.ds, champion, "cli"),
                "model_version": champion.get("version")}
    return runtime.monitor_drift(uc, args.ds, champion)


def _train(args, runtime):
    uc = args.use_case
    runtime.require_may_train(uc)   # before anything else: prod of a deploy-models use case never trains
    with runtime.training_lock(uc):  # one training at a time, as in the DAG
        as_of = runtime.resolve_as_of(uc, args.as_of, None)
        challenger = runtime.train(uc, as_of, args.reason, "manual")
        return {"challenger": challenger, "promotion": runtime.promote(uc, challenger, as_of)}


STEPS = {   # command -> (args, runtime) -> result
    "env": _env,
    "release": _release,
    "ingest": _ingest,
    "inbox": _inbox,
    "rollback": _rollback,
    "rollout": _rollout,
    "online-store": lambda args, runtime: runtime.refresh_online_store(args.use_case, args.ds),
    "simulate": lambda args, runtime: runtime.simulate(args.use_case),
    "summary": lambda args, runtime: summarize(runtime.spec(args.use_case)),
    "validate": lambda args, runtime: runtime.validate(args.use_case, args.ds,
                                                       allow_empty_redelivery=args.allow_empty_redelivery),
    "features": lambda args, runtime: {"ds": args.ds, "feature_rows": runtime.build_features(args.use_case, args.ds)},
    "score": _with_champion,
    "monitor": _with_champion,
    "performance": lambda args, runtime: runtime.live_performance(args.use_case, args.ds),
    "train": _train,
}


if __name__ == "__main__":
    sys.exit(main())
