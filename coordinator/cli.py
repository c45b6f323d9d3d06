"""The ``internvideo`` command line: run the coordinator, submit and watch jobs, make data."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import grpc

DEFAULT_ADDRESS = os.environ.get("INTERNVIDEO_ADDRESS", "127.0.0.1:50051")


def _state_name(value: int) -> str:
    from protos.internvideo.v1 import jobs_pb2 as pb
    return pb.JobState.Name(value).removeprefix("JOB_STATE_")


def render_event(event, out=sys.stdout) -> None:
    """One line per event; progress as a bar that redraws in place on a terminal."""
    body = event.WhichOneof("body")
    tty = out.isatty()
    if body == "progress":
        p = event.progress
        width = 30
        done = int(width * p.step / max(1, p.total_steps))
        loss = "" if p.unit == "shard" else f" loss {p.loss:.4f}"  # an evaluation has none
        line = (f"[{'#' * done}{'.' * (width - done)}] {p.unit or 'step'} {p.step}/{p.total_steps}{loss} "
                f"{p.clips_per_second:.1f} clips/s data-wait {100 * p.data_wait_fraction:.0f}%")
        out.write(("\r" + line) if tty else line + "\n")
    else:
        if tty:
            out.write("\n")
        if body == "state_changed":
            s = event.state_changed
            out.write(f"state → {_state_name(s.to_state)}{': ' + s.message if s.message else ''}\n")
        elif body == "checkpoint":
            out.write(f"checkpoint at step {event.checkpoint.step}: {event.checkpoint.path}\n")
        elif body == "skipped_video":
            v = event.skipped_video
            out.write(f"skipped video {v.path} ({v.reason}): {v.detail}\n")
        elif body == "validation":
            metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(event.validation.metrics.items()))
            out.write(f"validation at step {event.validation.step}: {metrics}\n")
        elif body == "result":
            metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(event.result.metrics.items()))
            out.write(f"result: {metrics}\n")
    out.flush()


def _job_summary(job) -> dict:
    return {"job_id": job.job_id, "name": job.name, "kind": job.kind, "state": _state_name(job.state),
            "message": job.message, "priority": job.priority, "request_id": job.request_id,
            "world_size": job.world_size,
            "progress": {"step": job.progress.step, "total_steps": job.progress.total_steps,
                         "loss": job.progress.loss},
            "result": dict(job.result.metrics), "final_checkpoint": job.result.final_checkpoint,
            "checkpoints": [c.path for c in job.checkpoints],
            "skipped_videos": [{"path": v.path, "reason": v.reason, "count": v.count} for v in job.skipped_videos]}


def connect(args: argparse.Namespace):
    """The client a command's flags describe (address, token, TLS files)."""
    from coordinator.client import ClientTls, JobClient, find_token
    token = find_token(args.token, args.token_file) or ""
    tls = ClientTls(Path(args.tls_ca), args.tls_cert and Path(args.tls_cert), args.tls_key and Path(args.tls_key)
                    ) if args.tls_ca else None
    return JobClient(args.address, token=token, tls=tls)


def _optional_path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def cmd_serve(args: argparse.Namespace) -> int:
    from coordinator.server import ServeOptions, serve
    host, _, port = args.listen.rpartition(":")
    return serve(ServeOptions(host=host, port=int(port), metrics_port=args.metrics_port,
                              state_dir=Path(args.state_dir).expanduser(), ray_address=args.ray_address,
                              num_cpus=args.num_cpus, worker_host=args.worker_host,
                              placement_timeout_s=args.placement_timeout,
                              ray_dashboard_port=None if args.ray_dashboard_port < 0 else args.ray_dashboard_port,
                              tls_cert=_optional_path(args.tls_cert), tls_key=_optional_path(args.tls_key),
                              tls_client_ca=_optional_path(args.tls_client_ca),
                              data_roots=tuple(Path(r) for r in args.data_root),
                              storage_roots=tuple(Path(r) for r in args.storage_root),
                              max_watches_per_token=args.max_watches_per_token,
                              shutdown_timeout_s=args.shutdown_timeout))


def cmd_token(args: argparse.Namespace) -> int:
    from coordinator.tenancy import Role, TokenStore
    tokens = TokenStore(Path(args.state_dir).expanduser() / "jobs.sqlite")
    try:
        if args.token_command == "create":
            info, token = tokens.create(args.tenant, Role(args.role), args.name)
            print(token)
            print(f"token {info.token_id}: tenant {info.tenant}, role {info.role.value} (shown once; only a hash "
                  "is kept)", file=sys.stderr)
        elif args.token_command == "revoke":
            tokens.revoke(args.token_id)
            print(f"token {args.token_id} revoked")
        else:
            for info in tokens.tokens():
                state = "revoked" if info.revoked_at else "active"
                print(f"{info.token_id}  {info.tenant:<20} {info.role.value:<7} {state:<8} {info.name}")
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    finally:
        tokens.close()
    return 0


def _limit(value: int | None) -> str:
    return "no limit" if value is None else str(value)


def cmd_quota(args: argparse.Namespace) -> int:
    from coordinator.tenancy import Quota, TokenStore
    tokens = TokenStore(Path(args.state_dir).expanduser() / "jobs.sqlite")
    try:
        if args.quota_command == "set":
            tokens.set_quota(args.tenant, Quota(args.gpus, args.queued_jobs, args.max_priority))
        for tenant, quota in tokens.quotas().items():
            print(f"{tenant:<20} running GPUs: {_limit(quota.max_running_gpus):<9} "
                  f"queued jobs: {_limit(quota.max_queued_jobs):<9} max priority: {quota.max_priority}")
    finally:
        tokens.close()
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from coordinator.client import read_config
    with connect(args) as client:
        job = client.submit(args.kind, read_config(args.config), args.set, min_workers=args.min_workers,
                            max_workers=args.max_workers, priority=args.priority, name=args.name,
                            request_id=args.request_id)
        print(job.job_id)
        if args.watch:
            return cmd_watch(argparse.Namespace(**{**vars(args), "job_id": job.job_id}))
    return 0


def cmd_submit_recipe(args: argparse.Namespace) -> int:
    from coordinator.client import read_recipe
    with connect(args) as client:
        jobs = client.submit_recipe(read_recipe(args.recipe), args.set, priority=args.priority,
                                    request_id=args.request_id)
        for job in jobs:
            print(f"{job.job_id}  {job.name}  {job.kind}" + (f"  after {', '.join(job.depends_on)}"
                                                               if job.depends_on else ""))
        if not args.watch:
            return 0
        for job in jobs:
            print(f"\n== {job.name} ({job.job_id})")
            for event in client.watch(job.job_id):
                render_event(event)
        ended = [client.get(job.job_id) for job in jobs]
        print()
        print(recipe_table(client, ended))
    return 0 if all(_state_name(j.state) == "SUCCEEDED" for j in ended) else 1


def recipe_table(client, jobs) -> str:
    """One line per stage: state, time from start to end, throughput, and its headline numbers
    (an evaluation's metrics; a training stage's validation, ``val_*``, or else its final loss)."""
    rows = [("stage", "kind", "state", "time", "clips/s", "result")]
    for job in jobs:
        times = [e.time.ToSeconds() for e in client.watch(job.job_id, follow=False)
                 if e.WhichOneof("body") == "state_changed" and _state_name(e.state_changed.to_state) != "QUEUED"]
        metrics = job.result.metrics
        evaluated = json.loads(job.result.details_json).get("metrics", {}) if job.result.details_json else {}
        headline = evaluated or {k: v for k, v in metrics.items() if k.startswith("val_")} or {
            k: metrics[k] for k in ("final_loss", "final_accuracy") if k in metrics}
        rows.append((job.name, job.kind, _state_name(job.state), f"{times[-1] - times[0]:.0f}s" if times else "-",
                     f"{metrics['clips_per_second']:.1f}" if "clips_per_second" in metrics else "-",
                     " ".join(f"{k}={v:.4g}" for k, v in sorted(headline.items())) or job.message[:60]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows)


def cmd_jobs(args: argparse.Namespace) -> int:
    from protos.internvideo.v1 import jobs_pb2 as pb
    states = [pb.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state]
    with connect(args) as client:
        token = ""
        while True:
            page = client.list(states=states, kinds=args.kind, page_token=token)
            for job in page.jobs:
                print(f"{job.job_id}  {job.kind:<14} {_state_name(job.state):<10} "
                      f"step {job.progress.step}/{job.progress.total_steps}  {job.message}")
            token = page.next_page_token
            if not token:
                return 0


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args) as client:
        print(json.dumps(_job_summary(client.get(args.job_id)), indent=2))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    with connect(args) as client:
        for event in client.watch(args.job_id):
            render_event(event)
        job = client.get(args.job_id)
    print(f"job {job.job_id}: {_state_name(job.state)} {job.message}")
    return 0 if _state_name(job.state) == "SUCCEEDED" else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    with connect(args) as client:
        job = client.cancel(args.job_id)
    print(f"job {job.job_id}: {_state_name(job.state)} {job.message}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict
    with connect(args) as client:
        print(json.dumps(MessageToDict(client.cluster()), indent=2))
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from internvideo.data.synthetic import write_synthetic_dataset, write_untrimmed_dataset
    ds = write_synthetic_dataset(args.out_dir, num_videos=args.num_videos, num_frames=args.num_frames,
                                 size=args.size, seed=args.seed)
    print(f"wrote {args.num_videos} videos to {ds.root}\n  train list: {ds.train_list}\n  val list:   {ds.val_list}")
    if args.untrimmed:
        annotation = write_untrimmed_dataset(Path(args.out_dir) / "untrimmed", num_videos=args.untrimmed,
                                             size=args.size, seed=args.seed)
        print(f"wrote {args.untrimmed} untrimmed videos\n  ActivityNet annotations: {annotation}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from coordinator.report import efficiency_rows, table, write_report
    with connect(args) as client:
        job, efficiency = client.get(args.job_id), client.efficiency(args.job_id)
        print(f"{job.name} ({job.kind}, {job.job_id}, {_state_name(job.state)})")
        print(table(efficiency_rows(efficiency)))
        if args.out:
            page = write_report(Path(args.out), job, efficiency, list(client.watch(args.job_id, follow=False)))
            print(f"report: {page}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from coordinator.report import results_text
    with connect(args) as client:
        job = client.get(args.job_id)
    if args.json:
        details = json.loads(job.result.details_json) if job.result.details_json else {}
        print(json.dumps({"job_id": job.job_id, "name": job.name, "kind": job.kind, "state": _state_name(job.state),
                          "metrics": dict(job.result.metrics), "details": details}, indent=2))
    else:
        print(f"{job.name} ({job.kind}, {job.job_id}, {_state_name(job.state)})")
        print(results_text(job))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from coordinator.demo import run_demo
    return run_demo(Path(args.workdir), args.steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="internvideo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def client_command(name: str, fn, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--address", default=DEFAULT_ADDRESS, help="coordinator host:port")
        p.add_argument("--token", default=None,
                       help="bearer token (else --token-file, $INTERNVIDEO_TOKEN, the file $INTERNVIDEO_TOKEN_FILE, "
                            "or ~/.internvideo/client-token, which the embedded coordinator writes)")
        p.add_argument("--token-file", default=None, help="read the bearer token from this file")
        p.add_argument("--tls-ca", default=os.environ.get("INTERNVIDEO_TLS_CA"),
                       help="CA certificate (PEM) of a coordinator that serves TLS")
        p.add_argument("--tls-cert", default=None, help="this client's certificate (PEM), for mutual TLS")
        p.add_argument("--tls-key", default=None, help="this client's key (PEM), for mutual TLS")
        p.set_defaults(fn=fn)
        return p

    def admin_command(parent, name: str, help_: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_)
        p.add_argument("--state-dir", default="~/.internvideo", help="the coordinator's state folder")
        return p

    p = sub.add_parser("serve", help="run the coordinator (embedded Ray + SQLite by default)")
    p.add_argument("--listen", default="127.0.0.1:50051", help="host:port for the gRPC API")
    p.add_argument("--metrics-port", type=int, default=9464)
    p.add_argument("--ray-dashboard-port", type=int, default=0,
                   help="the embedded Ray's dashboard, on 127.0.0.1 (0: 8265 or the next free port, -1: none)")
    p.add_argument("--state-dir", default="~/.internvideo", help="SQLite job store and checkpoints")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting one")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPU slots of the embedded Ray")
    p.add_argument("--worker-host", default=None,
                   help="address workers' metrics and rendezvous listen on (default: their node's address)")
    p.add_argument("--placement-timeout", type=float, default=60.0,
                   help="seconds a job's gang waits for room before re-fitting its size to the cluster")
    p.add_argument("--tls-cert", default=None, help="serve TLS with this certificate chain (PEM)")
    p.add_argument("--tls-key", default=None, help="... and this private key (PEM)")
    p.add_argument("--tls-client-ca", default=None,
                   help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument("--data-root", action="append", default=[],
                   help="confine the paths configs read to these folders and the storage roots (repeatable; "
                        "none: paths are not confined)")
    p.add_argument("--storage-root", action="append", default=[],
                   help="folders jobs may write outputs to, besides the state folder (repeatable)")
    p.add_argument("--max-watches-per-token", type=int, default=64, help="open WatchJob streams a token may hold")
    p.add_argument("--shutdown-timeout", type=float, default=60.0,
                   help="on SIGTERM, seconds running jobs get to checkpoint before the coordinator exits")
    p.set_defaults(fn=cmd_serve)

    tokens = sub.add_parser("token", help="bearer tokens: create, list, revoke (on the coordinator's machine)")
    tokens.set_defaults(fn=cmd_token)
    token_sub = tokens.add_subparsers(dest="token_command", required=True)
    p = admin_command(token_sub, "create", "a new token, printed once")
    p.add_argument("--tenant", required=True, help="whose jobs it submits and sees (e.g. a team: vision-lab)")
    p.add_argument("--role", choices=["viewer", "member", "admin"], default="member",
                   help="viewer: read; member: read, submit, cancel; admin: every tenant's jobs")
    p.add_argument("--name", default="", help="a note on who holds it")
    admin_command(token_sub, "list", "every token (never the secret)")
    admin_command(token_sub, "revoke", "revoke a token: its next call is refused").add_argument("token_id")

    quotas = sub.add_parser("quota", help="per-tenant quotas: running GPUs, queued jobs")
    quotas.set_defaults(fn=cmd_quota)
    quota_sub = quotas.add_subparsers(dest="quota_command", required=True)
    p = admin_command(quota_sub, "set", "set a tenant's quotas (--gpus or --queued-jobs left out: no limit)")
    p.add_argument("tenant")
    p.add_argument("--gpus", type=int, default=None, help="trainers its running jobs may hold at once")
    p.add_argument("--queued-jobs", type=int, default=None, help="jobs it may have waiting in the queue")
    p.add_argument("--max-priority", type=int, default=0,
                   help="the highest priority its members may submit at (priority preempts other tenants' jobs)")
    admin_command(quota_sub, "list", "every tenant's quotas")

    p = client_command("submit", cmd_submit, "submit a job")
    p.add_argument("kind", help="job kind, e.g. pretrain-mae")
    p.add_argument("--config", required=True, help="YAML file or preset name (tiny-cpu, vit-b)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--min-workers", type=int, default=1)
    p.add_argument("--max-workers", type=int, default=0)
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--name", default="")
    p.add_argument("--request-id", default=None, help="idempotency key (default: random)")
    p.add_argument("--watch", action="store_true", help="stream progress until the job ends")

    p = client_command("submit-recipe", cmd_submit_recipe, "submit a recipe: a chain of jobs, one per stage")
    p.add_argument("recipe", help="a recipe YAML file, or a packaged recipe's name (tiny-cpu, paper)")
    p.add_argument("--set", action="append", default=[], metavar="STAGE:KEY=VALUE",
                   help="override one field of one stage's config (repeatable)")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--request-id", default=None, help="idempotency key (default: random)")
    p.add_argument("--watch", action="store_true", help="stream every stage until the last ends, then a table")

    p = client_command("jobs", cmd_jobs, "list jobs")
    p.add_argument("--state", action="append", default=[], help="filter by state (repeatable)")
    p.add_argument("--kind", action="append", default=[], help="filter by kind (repeatable)")

    for name, fn, help_ in (("status", cmd_status, "show one job"), ("watch", cmd_watch, "stream a job's events"),
                            ("cancel", cmd_cancel, "cancel a job")):
        client_command(name, fn, help_).add_argument("job_id")
    client_command("cluster", cmd_cluster, "nodes, free trainer slots, running jobs, Ray's dashboard")
    p = client_command("report", cmd_report, "a job's efficiency: a table; with --out, plots and an HTML page")
    p.add_argument("job_id")
    p.add_argument("--out", default="", help="folder for the PNG plots and index.html")
    p = client_command("results", cmd_results, "a job's numbers: an evaluation's metrics and tables")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="every metric and table, as JSON")

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write a synthetic video dataset (H.264 mp4 + lists)")
    p.add_argument("out_dir")
    p.add_argument("--num-videos", type=int, default=64)
    p.add_argument("--num-frames", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--untrimmed", type=int, default=0, metavar="N",
                   help="also N untrimmed videos with action segments, annotated in ActivityNet JSON")
    p.set_defaults(fn=cmd_data_synth)

    p = sub.add_parser("demo", help="serve, make data, run InternVideo's chain of stages end to end")
    p.add_argument("--workdir", default=".demo")
    p.add_argument("--steps", type=int, default=None, help="shorten every stage (default: the recipe's)")
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.command == "serve" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
