"""The one harness for child processes on a private ROS graph (tests, ``scripts/demo.py``, benchmarks).

* :func:`ros_env` / :func:`ros_environment`: a ``ROS_DOMAIN_ID`` of our own, localhost-only
  discovery, no ``ROS_PYTHON_CHECK_FIELDS`` (it makes assigning large ``data`` ~100x slower),
  and the m3l_ros this process imports first on ``PYTHONPATH`` so children run the same copy.
* :class:`Child`: a process with its output in a log file. Only its own PID is ever signalled.
* :class:`GraphProbe`: an rclpy node in its own context that subscribes, publishes and spins
  until a condition holds, failing fast (with the log tail) when a watched child dies.

Publishers need no middleware profile variable: the project's publishers are RELIABLE (as the
RealSense driver's), which Fast DDS delivers at camera resolution with its defaults.
"""
from __future__ import annotations

import importlib.util
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

# Variables a child must not inherit: ROS_PYTHON_CHECK_FIELDS slows large messages ~100x.
_DROP_VARS = ("ROS_PYTHON_CHECK_FIELDS",)
# Fast DDS profile variables: a process measured "on Fast DDS's defaults" must carry none of them
FASTDDS_PROFILE_VARS = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE",
                        "RMW_FASTRTPS_USE_QOS_FROM_XML", "FASTDDS_BUILTIN_TRANSPORTS")


def package_root() -> Path:
    """The directory holding the ``m3l_ros`` package this Python imports (tree or site-packages)."""
    return Path(__file__).resolve().parents[1]


def pick_domain_id() -> int:
    """``ROS_DOMAIN_ID`` in 1..101 derived from the pid, so parallel runs rarely share a graph.

    Under pytest-xdist (``PYTEST_XDIST_WORKER=gwN``) the worker number picks the parity, so the two
    workers of ``make test`` never share a graph whatever their pids.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return 1 + 2 * (os.getpid() % 50) + int(worker[2:]) % 2
    return 1 + os.getpid() % 101


def domain_id_from_env(default: int | None = None) -> int:
    """``ROS_DOMAIN_ID`` if set (validated), else ``default``, else a random one in 1..101."""
    value = os.environ.get("ROS_DOMAIN_ID", "").strip()
    if not value:
        return default if default is not None else random.randint(1, 101)
    if not value.isdigit() or not 0 <= int(value) <= 232:
        raise ValueError(f"environment variable ROS_DOMAIN_ID is {value!r}; expected an integer 0..232 (or unset)")
    return int(value)


def ros_env(domain_id: int, *, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Environment for a child on the private graph ``domain_id``."""
    env = dict(os.environ if base is None else base)
    root = str(package_root())
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1",
               RCUTILS_COLORIZED_OUTPUT="0", PYTHONPATH=os.pathsep.join([root, *paths]))
    env.setdefault("OMP_NUM_THREADS", "1")
    for var in _DROP_VARS:
        env.pop(var, None)
    env.update(extra)
    return env


@contextmanager
def ros_environment(domain_id: int) -> Iterator[dict[str, str]]:
    """This process's ``os.environ`` set up like :func:`ros_env` (for in-process rclpy), restored after."""
    keys = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", *_DROP_VARS)
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    for var in _DROP_VARS:
        os.environ.pop(var, None)
    try:
        yield ros_env(domain_id)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ros2_executable() -> str | None:
    """The upstream ``ros2`` CLI next to this Python (or on PATH) when launch_ros is importable, else None."""
    # find_spec, not import: importing launch_ros here would load launch/rclpy machinery into the
    # caller's process (a test session) for no use; only the ``ros2`` child process needs it.
    if importlib.util.find_spec("launch_ros") is None:
        return None
    here = Path(sys.executable).parent / "ros2"
    return str(here) if here.is_file() else shutil.which("ros2")


class ChildError(RuntimeError):
    """A child process failed or exited early; the message carries its command and log tail."""


class Child:
    """A child process with stdout+stderr in ``log_path``.

    ``new_session=True`` keeps a terminal's Ctrl-C away from it, so the owner decides the order
    of shutdown. Only this PID (or, with ``group=True`` in :meth:`send`, its own process group)
    is ever signalled.
    """

    def __init__(self, argv: Sequence[str], *, env: dict[str, str], log_path: Path, name: str | None = None,
                 cwd: str | Path | None = None, new_session: bool = True) -> None:
        self.argv = [str(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.log_path = Path(log_path)
        self.new_session = new_session
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, env=env, cwd=None if cwd is None else str(cwd), stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=new_session)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int, *, group: bool = False) -> None:
        """``sig`` to this PID, or with ``group`` to its own process group (a terminal's Ctrl-C;
        only for a child started with ``new_session``)."""
        if self.alive():
            if group and self.new_session:
                os.killpg(self.proc.pid, sig)
            else:
                os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout`` s."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 25) -> str:
        text = self.output().rstrip().splitlines()
        return "\n".join("    " + ln for ln in text[-lines:]) or "    (empty log)"

    def fail(self, what: str) -> ChildError:
        return ChildError(f"{what}\n  command: {' '.join(self.argv)}\n  last lines of {self.log_path}:\n{self.tail()}")

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGINT, *, group: bool = False) -> int | None:
        """``sig`` (to the group with ``group``) and wait; SIGKILL if it does not exit.

        The exit code (None if it had to be killed)."""
        rc = self.proc.poll()
        if rc is None:
            self.send(sig, group=group)
            rc = self.wait(timeout)
            if rc is None:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return rc


class LifecycleClient:
    """get_state / change_state of one managed node, through a :class:`GraphProbe`.

    An unanswered get_state is sent again (:meth:`GraphProbe.call`); an unanswered change_state is
    checked against get_state (it may have run with its answer lost) before it is sent again.
    """

    TRANSITIONAL = ("configuring", "cleaningup", "shuttingdown", "activating", "deactivating", "errorprocessing")

    def __init__(self, probe: "GraphProbe", node: str) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState

        self.probe, self.node = probe, node
        self.get = probe.node.create_client(GetState, f"{node}/get_state")
        self.change = probe.node.create_client(ChangeState, f"{node}/change_state")

    def state(self) -> str:
        """The node's state label (``unconfigured``, ``inactive``, ``active``, ...)."""
        from lifecycle_msgs.srv import GetState

        return self.probe.call(self.get, GetState.Request()).current_state.label

    def transition(self, transition_id: int, *, timeout: float = 60.0) -> bool:
        """Request a transition; whether it succeeded."""
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.id = transition_id
        before = self.state()
        for _ in range(3):
            try:
                return self.probe.call(self.change, request, timeout=timeout, resend_after=None).success
            except TimeoutError:
                self.probe.spin_until(lambda: self.state() not in self.TRANSITIONAL, timeout)
                if self.state() != before:
                    return True
        raise TimeoutError(f"{self.node}/change_state did not answer")


def python_child(module: str, *args: str, env: dict[str, str], log_path: Path, name: str | None = None,
                 **kwargs: Any) -> Child:
    """``python -m module args...`` with this interpreter."""
    return Child([sys.executable, "-m", module, *args], env=env, log_path=log_path, name=name or module, **kwargs)


def latched_qos(depth: int = 1):
    """RELIABLE + TRANSIENT_LOCAL (rclpy has no preset): the node's ``~/mode`` and ``~/class_names``."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class Received:
    msg: Any
    t: float  # time.monotonic() at receipt


class GraphProbe:
    """A test/driver-side rclpy node in its own context on ``domain_id``.

    QoS arguments accept anything rclpy does; an int N is rclpy's RELIABLE/KEEP_LAST(N) default.
    """

    def __init__(self, domain_id: int, name: str = "m3l_probe") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.domain_id = domain_id
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.records: dict[str, list[Received]] = {}

    def subscribe(self, key: str, msg_type: Any, topic: str, qos: Any = 10,
                  callback: Callable[[Any], None] | None = None) -> list[Received]:
        """Record every message on ``topic`` in ``records[key]`` (and call ``callback``)."""
        out = self.records.setdefault(key, [])

        def on_msg(msg: Any) -> None:
            out.append(Received(msg, time.monotonic()))
            if callback is not None:
                callback(msg)

        self.node.create_subscription(msg_type, topic, on_msg, qos)
        return out

    def publisher(self, msg_type: Any, topic: str, qos: Any = 10):
        return self.node.create_publisher(msg_type, topic, qos)

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.01, max(0.0, end - time.monotonic())))

    def spin_until(self, pred: Callable[[], bool], timeout: float, *, tick: Callable[[], None] | None = None,
                   period: float = 0.05, children: Sequence[Child] = (), what: str = "") -> bool:
        """Spin (calling ``tick`` every ``period`` s) until ``pred()``; False on timeout.

        A watched child that exits first raises :class:`ChildError` with its log tail.
        """
        end = time.monotonic() + timeout
        next_tick = time.monotonic()
        while time.monotonic() < end:
            if tick is not None and time.monotonic() >= next_tick:
                tick()
                next_tick += period
            self.executor.spin_once(timeout_sec=0.005 if tick is not None else 0.02)
            if pred():
                return True
            for c in children:
                if not c.alive():
                    raise c.fail(f"{c.name} exited with code {c.returncode} while waiting for "
                                 f"{what or 'a condition'}")
        return pred()

    def latest_diagnostics(self, node: str, key: str = "diagnostics") -> dict[str, str] | None:
        """The newest /diagnostics status of ``node`` (fully qualified name) among ``records[key]``:
        its key/value pairs plus ``_level`` and ``_message``; None before the first one."""
        for rec in reversed(self.records.get(key, [])):
            for st in rec.msg.status:
                if st.name.startswith(node):
                    return {"_level": st.level, "_message": st.message, **{kv.key: kv.value for kv in st.values}}
        return None

    def settled_diagnostics(self, node: str, counters: Sequence[str], *, timeout: float = 30.0,
                            children: Sequence[Child] = ()) -> dict[str, str] | None:
        """``node``'s diagnostics once ``counters`` stopped moving (three messages in a row agree)."""
        seen: list[tuple[str, ...]] = []

        def settled() -> bool:
            d = self.latest_diagnostics(node)
            if d is not None:
                seen.append(tuple(d[c] for c in counters))
            return len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]

        self.spin_until(settled, timeout, period=1.0, tick=lambda: None, children=children,
                        what="settled diagnostics")
        return self.latest_diagnostics(node)

    def get_parameters(self, node: str, names: Sequence[str], *, timeout: float = 60.0) -> dict[str, Any]:
        """``node``'s values of ``names`` (its get_parameters service, resent when unanswered)."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        client = self.node.create_client(GetParameters, f"{node}/get_parameters")
        values = self.call(client, GetParameters.Request(names=list(names)), timeout=timeout, resend_after=10).values
        return {n: parameter_value_to_python(v) for n, v in zip(names, values)}

    def list_parameters(self, node: str, *, timeout: float = 60.0) -> list[str]:
        """The names of ``node``'s parameters."""
        from rcl_interfaces.srv import ListParameters

        client = self.node.create_client(ListParameters, f"{node}/list_parameters")
        return list(self.call(client, ListParameters.Request(), timeout=timeout, resend_after=10).result.names)

    def call(self, client: Any, request: Any, *, timeout: float = 120.0, resend_after: float | None = 15.0) -> Any:
        """Call ``client`` (a client on this probe's node) and return the response.

        Right after a client and a service discover each other, DDS can lose the request or the
        response (one side has not matched the other's reader yet; more likely on a loaded machine),
        and rclpy then waits for ever. Without an answer for ``resend_after`` s the request is sent
        again: only for requests that are safe to repeat (None: never resend). TimeoutError after
        ``timeout`` s in all.
        """
        name = client.srv_name
        end = time.monotonic() + timeout
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"{name} not available within {timeout:g} s")
        while True:
            future = client.call_async(request)
            left = end - time.monotonic()
            if self.spin_until(future.done, max(0.0, left if resend_after is None else min(resend_after, left))):
                return future.result()
            client.remove_pending_request(future)
            if time.monotonic() >= end:
                raise TimeoutError(f"{name} did not answer within {timeout:g} s")

    def wait_for_topic(self, topic: str, *, publishers: int = 0, subscribers: int = 0, timeout: float,
                       children: Sequence[Child] = ()) -> bool:
        """Until ``topic`` has at least that many publishers and subscribers on the graph."""
        return self.spin_until(lambda: self.node.count_publishers(topic) >= publishers
                               and self.node.count_subscribers(topic) >= subscribers, timeout,
                               children=children, what=f"{topic} on the graph")

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()
