"""Execution workers: threads that claim queued executions and run them.

One listener thread wakes the workers on ``NOTIFY`` (an enqueue) and on a
polling tick (the backstop for a dead LISTEN connection and for leases that
expire without any notification). Each worker thread claims one execution at
a time, so ``concurrency`` is how many run at once in this process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import structlog

from commands.executions import ExecutionRunner, default_worker_id
from infrastructure.queue import ExecutionQueue, wait_for_enqueue

log = structlog.get_logger("reporunner.worker")

_MAX_BACKOFF_S = 10.0


@dataclass
class Worker:
    runner: ExecutionRunner
    queue: ExecutionQueue
    concurrency: int
    lease_s: float
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        self.worker_id = default_worker_id("worker")
        self._wake = threading.Condition()
        # The latest claim's failure per worker thread (None: it claimed), for /readyz.
        self._claim_errors: dict[str, str | None] = {}

    def claim_problem(self) -> str | None:
        """Why this worker cannot claim executions, while its latest claims fail."""
        errors = [error for error in list(self._claim_errors.values()) if error]
        if not errors:
            return None
        return f"{len(errors)} of {self.concurrency} workers cannot claim: {errors[0]}"

    def start(self, stop: threading.Event) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._listen, args=(stop,), name="worker-listener", daemon=True)
        ]
        threads += [
            threading.Thread(
                target=self._work, args=(f"{self.worker_id}/{i}", stop), name=f"worker-{i}"
            )
            for i in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        log.info("workers started", worker_id=self.worker_id, concurrency=self.concurrency)
        return threads

    def _notify_all(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _listen(self, stop: threading.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                with self.queue.listening() as conn:
                    backoff = 0.1
                    while not stop.is_set():
                        wait_for_enqueue(conn, self.poll_s)
                        self._notify_all()
            except Exception as exc:  # lost connection: wake pollers, retry
                log.warning("worker listener reconnecting", error=str(exc))
                self._notify_all()
                stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _work(self, worker_id: str, stop: threading.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                claims = self.queue.claim(worker_id, self.lease_s)
                backoff = 0.1
                self._claim_errors[worker_id] = None
            except Exception as exc:  # the database is away: back off, retry
                self._claim_errors[worker_id] = f"{type(exc).__name__}: {str(exc).strip()}"
                log.warning("claim failed", worker_id=worker_id, error=str(exc))
                stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            if not claims:
                with self._wake:
                    self._wake.wait(self.poll_s)
                continue
            for claim in claims:
                structlog.contextvars.bind_contextvars(execution_id=str(claim.execution_id))
                try:
                    execution = self.runner.run_claimed(claim.execution_id, claim.claims, worker_id)
                    log.info(
                        "execution done",
                        status=execution.status if execution else "missing",
                        claims=claim.claims,
                        correlation_id=execution.correlation_id if execution else None,
                    )
                except Exception:
                    # The row stays leased; when the lease expires the next
                    # claim settles it. Never let one execution kill the worker.
                    log.exception("execution could not be settled")
                finally:
                    structlog.contextvars.unbind_contextvars("execution_id")
