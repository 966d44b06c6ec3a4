"""`mnstream serve`: the model as a Ray Serve application that many `--engine serve` runs and HTTP clients share."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import ray
from ray import serve
from rich.console import Console

from stream.arguments import Parser, add_model_arguments, add_runtime_arguments, config_from_flags
from stream.cluster import Connection, connect
from stream.commands import CommandConsole, Stopping, run_command
from stream.config import BatchingConfig, ModelConfig
from stream.deployment import APP_NAME, ROUTE, Classifier, ModelInfo
from stream.engines import require_keras_model, require_tensorflow_if_needed
from stream.types import MnstreamError, ModelError, UsageError, first_line

SERVE_MAX_WAIT_MS = 0.0
"""How long a replica waits for more calls to fill a batch: none. Serve makes a lone call wait all of it (a live
run's every frame), while calls that queue as a batch runs are taken together without it.
"""

PROXY_START_TIMEOUT_S = 60
"""How long Serve's controller lets the HTTP proxy start before it kills and replaces it: as long as `serve.start`
waits for it. Serve's own 5 s is shorter than a proxy's imports take on a busy two-core machine, and `serve.start`
then fails with the killed proxy's error.
"""

EXAMPLES = """\
examples:
  mnstream serve --model mobilenet_v2_1.0_224_quant.tflite --replicas 2     a Ray cluster of this machine's own
  mnstream serve --address auto --min-replicas 1 --max-replicas 8           on the cluster of `ray start --head`
  mnstream --source clip.mp4 --engine serve                                 a run whose frames go to it
  curl --data-binary @photo.jpg http://127.0.0.1:8000/classify             the top-k of one photo as JSON

It stays up until Ctrl-C or SIGTERM, which delete the application (and stop the cluster it started).
"""


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How the application runs: its replicas, their CPUs, and where its HTTP route listens."""

    replicas: int | None = None
    """A fixed count; 1 unless autoscaled."""
    min_replicas: int | None = None
    max_replicas: int | None = None
    cpus_per_replica: float | None = None
    """None until `with_cpus_of` sets it: a cluster's own CPUs shared among the replicas, or 1."""
    http_host: str = "127.0.0.1"
    http_port: int = 8000

    def __post_init__(self) -> None:
        for count, lowest in ((self.replicas, 1), (self.max_replicas, 1), (self.min_replicas, 0)):
            if count is not None and count < lowest:
                raise UsageError("--replicas and --max-replicas must be >= 1, --min-replicas >= 0")
        if self.autoscaled and self.replicas is not None:
            raise UsageError("--replicas fixes the count, --min-replicas/--max-replicas autoscale it; choose one")
        if self.autoscaled and (self.min_replicas or 0) > (self.max_replicas or self.min_replicas or 1):
            raise UsageError("--min-replicas must not exceed --max-replicas")
        if self.cpus_per_replica is not None and self.cpus_per_replica <= 0:
            raise UsageError("--cpus-per-replica must be > 0")
        if not 0 < self.http_port < 65536:
            raise UsageError("--http-port must be between 1 and 65535")

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    def with_cpus_of(self, own_cluster_cpus: float | None) -> ServeOptions:
        """These options with each replica's CPUs decided where --cpus-per-replica left them open: on a cluster that
        `mnstream serve` started, its CPUs shared among a fixed count of replicas, so that one replica on a machine
        of several cores runs as many LiteRT threads (on two cores, one thread ran a whole run at 0.52x of a local
        one, two at 0.72-0.86x); elsewhere 1, Ray's own default, as nodes and replica counts vary.

        Args:
            own_cluster_cpus: The CPUs of the cluster this command started; None for a cluster it joined.
        """
        if self.cpus_per_replica is not None:
            return self
        share = 1.0
        if own_cluster_cpus is not None and not self.autoscaled:
            share = max(1.0, float(own_cluster_cpus // (self.replicas or 1)))
        return dataclasses.replace(self, cpus_per_replica=share)

    def deployment_options(self, batch_size: int) -> dict[str, object]:
        """Serve's options for the Classifier deployment."""
        # A replica takes in up to two batches' worth of calls: one being inferred, the next one forming.
        options: dict[str, object] = {
            "ray_actor_options": {"num_cpus": self.cpus_per_replica},
            "max_ongoing_requests": 2 * batch_size,
            # A replica that cannot load the model would fail the same way again: end the deployment at the first
            # failure, not after Serve's retries (each a new process, half a minute on a busy machine). Replicas
            # that die later are still restarted: the count holds only until one has started.
            "max_constructor_retry_count": 1,
        }
        if self.autoscaled:
            low = self.min_replicas or 0
            options["autoscaling_config"] = {
                "min_replicas": low,
                "initial_replicas": max(low, 1),
                "max_replicas": max(self.max_replicas or 1, low, 1),
                "target_ongoing_requests": batch_size,
            }
        else:
            options["num_replicas"] = self.replicas or 1
        return options


def build_parser() -> argparse.ArgumentParser:
    """The `mnstream serve` command line; model and batching flags set the config keys a run's do."""
    parser = Parser(
        prog="mnstream serve",
        description="Serve the model on Ray Serve: replicas that batch the frames of every `mnstream --engine "
        "serve` run together, and an HTTP route that classifies posted JPEG or PNG images.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    model = add_model_arguments(parser)
    add_runtime_arguments(model)
    model.add_argument("--top-k", dest="model.top_k", type=int, metavar="K", help="labels per image over HTTP (5)")
    replicas = parser.add_argument_group("replicas")
    replicas.add_argument(
        "--batch-size",
        dest="batching.batch_size",
        type=int,
        metavar="N",
        help="most frames per model call in a replica, from every client's calls together (8)",
    )
    replicas.add_argument(
        "--max-wait-ms",
        dest="batching.max_wait_ms",
        type=float,
        metavar="MS",
        help="longest wait for other clients' frames to fill a batch after its first call "
        f"({SERVE_MAX_WAIT_MS:g}); every call that waits pays it, a live frame too",
    )
    replicas.add_argument("--replicas", type=int, metavar="N", help="replicas, each with its own engine (1)")
    replicas.add_argument("--min-replicas", type=int, metavar="N", help="autoscale: the fewest replicas")
    replicas.add_argument("--max-replicas", type=int, metavar="N", help="autoscale: the most replicas")
    replicas.add_argument(
        "--cpus-per-replica",
        type=float,
        metavar="N",
        help="CPUs Ray reserves for each replica; its LiteRT threads unless --threads says (1; on a cluster of "
        "this command's own, its cores shared among --replicas)",
    )
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument(
        "--address",
        metavar="auto|HOST:PORT",
        help="join this Ray cluster: auto, the one `ray start` runs on this machine, or its head's address; "
        "default: start one of this command's own, which stops with it",
    )
    cluster.add_argument(
        "--http-host",
        metavar="HOST",
        help="where the HTTP route listens (127.0.0.1: this machine only; 0.0.0.0 opens it to the network)",
    )
    cluster.add_argument("--http-port", type=int, metavar="PORT", help="the HTTP route's port (8000)")
    parser.add_argument("--config", metavar="FILE", help="TOML config of a run; its model and batching are used")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: Sequence[str], *, console: Console | None = None) -> int:
    """Runs `mnstream serve`; returns the exit code (130 or 143 once Ctrl-C or SIGTERM ends it)."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    debug = args.pop("debug", False)
    config_path = args.pop("config", None)
    address = args.pop("address", None)
    options = {key: args.pop(key) for key in [*args] if "." not in key}

    def serve_until_stopped(stopping: Stopping) -> int:
        config = config_from_flags(parser, args, config_path, defaults={"batching.max_wait_ms": SERVE_MAX_WAIT_MS})
        serve_options = ServeOptions(**options)
        _require_model_here(config.model)
        if address is None:
            _require_free_http_port(serve_options.http_host, serve_options.http_port)
        shown_on = console or CommandConsole()
        stopped = threading.Event()
        with Serving(config.model, config.batching, serve_options, address=address) as serving:
            shown_on.print(serving.summary())
            stopping.stop = stopped.set
            stopped.wait()
        return 0

    return run_command(serve_until_stopped, debug=debug)


def _require_model_here(model: ModelConfig) -> None:
    """Refuses, before any replica starts (each would fail in turn), a model this machine cannot find.

    Raises:
        ModelError: No such model file or Keras model, or it needs TensorFlow, which is not installed.
    """
    if model.is_tflite and not Path(model.model).is_file():
        raise ModelError(f"model file {model.model} does not exist; check --model")
    if not model.is_tflite:
        require_keras_model(model)
    require_tensorflow_if_needed(model)


def _require_free_http_port(host: str, port: int) -> None:
    """Refuses, before Ray starts, an HTTP address where this machine cannot listen: the cluster this command
    starts puts Serve's proxy here, whose failure to bind would come back from deep inside Ray.

    Raises:
        UsageError: The port is in use, or the host is not an address of this machine.
    """
    try:
        socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UsageError(
                f"--http-port {port}: {host}:{port} is in use; choose another port or stop what listens there"
            ) from None
        raise UsageError(
            f"--http-host {host}: cannot listen there ({error.strerror or error}); give this machine's address"
        ) from None


def _replica_failure() -> str | None:
    """The last line of the error a replica of the failed deployment raised (its exception and message)."""
    application = serve.status().applications.get(APP_NAME)
    messages = [] if application is None else [status.message for status in application.deployments.values()]
    lines = [line.strip() for message in messages for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else None


class Serving:
    """The application on its cluster, from `__enter__` (which joins or starts the cluster and deploys) to
    `__exit__` (which deletes it, and stops a cluster it started).
    """

    def __init__(
        self, model: ModelConfig, batching: BatchingConfig, options: ServeOptions, *, address: str | None
    ) -> None:
        """Keeps what to deploy where.

        Args:
            model: The model each replica loads.
            batching: Each replica's largest batch and its wait.
            options: Replicas, CPUs and the HTTP route.
            address: The cluster to join (as `stream.cluster.connect`), or None to start one.
        """
        self._model = model
        self._batching = batching
        self._options = options
        self._address = address
        self._connection: Connection | None = None
        self.info: ModelInfo | None = None
        self.http_address: str | None = None
        """Where the HTTP route listens: HOST:PORT."""

    def __enter__(self) -> Self:
        self._connection = connect(self._address)
        try:
            own_cpus = ray.cluster_resources().get("CPU") if self._connection.started else None
            self._options = self._options.with_cpus_of(own_cpus)
            serve.start(
                proxy_location="HeadOnly",
                http_options={"host": self._options.http_host, "port": self._options.http_port},
                logging_config={"log_level": "WARNING", "enable_access_log": False},
                controller_options={
                    "runtime_env": {"env_vars": {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": str(PROXY_START_TIMEOUT_S)}}
                },
            )
            deployment = serve.deployment(Classifier).options(
                **self._options.deployment_options(self._batching.batch_size)
            )
            application = deployment.bind(
                self._replica_model(),
                batch_size=self._batching.batch_size,
                max_wait_ms=self._batching.max_wait_ms,
            )
            try:
                handle = serve.run(application, name=APP_NAME, route_prefix=ROUTE)
            except RuntimeError as error:
                raise MnstreamError(
                    f"the replicas could not start: {_replica_failure() or first_line(error)}"
                ) from None
            self.info = handle.describe.remote().result()
            # Serve keeps the HTTP options it first started with on a cluster; ours apply only if we started it.
            http = serve.context._get_global_client().http_config
            self.http_address = f"{http.host}:{http.port}"
        except BaseException:
            self._tear_down()
            raise
        return self

    def _replica_model(self) -> ModelConfig:
        """The model as a replica loads it: files by absolute path (a replica's working folder is not ours), and
        LiteRT's threads its share of the cores, not all of its node's.
        """
        model = self._model
        if Path(model.model).is_file():
            model = dataclasses.replace(model, model=str(Path(model.model).resolve()))
        if model.labels is not None:
            model = dataclasses.replace(model, labels=str(Path(model.labels).resolve()))
        if model.threads is not None or model.runtime != "litert":
            return model
        return dataclasses.replace(model, threads=max(1, int(self._options.cpus_per_replica)))

    def __exit__(self, *_: object) -> None:
        self._tear_down()

    @property
    def address(self) -> str:
        """The cluster's address, as runs give it to --address."""
        assert self._connection is not None, "not serving"
        return self._connection.address

    def summary(self) -> str:
        """Where the application listens and what it serves, for the console."""
        info, options = self.info, self._options
        replicas = (
            f"{options.min_replicas or 0} to {options.max_replicas or 1} replicas (autoscaled)"
            if options.autoscaled
            else f"{options.replicas or 1} replica{'s' if (options.replicas or 1) > 1 else ''}"
        )
        address, cpus = self.address, options.cpus_per_replica
        return (
            f"mnstream: serving {info.name} ({len(info.classes)} classes, {info.input_size[0]}x{info.input_size[1]})"
            f" with {replicas} of {cpus:g} CPU{'' if cpus == 1 else 's'}, batches of up to {info.max_batch_size} frames\n"
            f"  Ray cluster: {address}{' (started here; it stops with this command)' if self._connection.started else ''}\n"
            f"  runs:        mnstream --source ... --engine serve --address {address}\n"
            f"  HTTP:        POST JPEG or PNG images to http://{self.http_address}{ROUTE}\n"
            "Ctrl-C stops it."
        )

    def _tear_down(self) -> None:
        if self._connection is None:
            return
        try:
            if self._connection.started:
                serve.shutdown()
            else:
                # Other applications may share the cluster's Serve; only ours goes.
                serve.delete(APP_NAME)
        finally:
            self._connection.close()
            self._connection = None
